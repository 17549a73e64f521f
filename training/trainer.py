"""The distributed StarGAN training loop: stream batches, step D and G, track, checkpoint, resume."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from etl.verify import read_metadata
from schemas.faces import SCHEMA_VERSION, SPLITS, DatasetMetadata
from training.checkpoint import latest_checkpoint, load_checkpoint, make_state, restore_state, save_checkpoint
from training.config import TrainConfig, lr_at, with_c_dim
from training.data import DataConfig, fixed_faces, open_stream
from training.distributed import Workers
from training.models import build_discriminator, build_generator
from training.samples import sample_grid
from training.steps import DeferredStep, build_optimizers, train_iteration
from training.tracking import make_tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how often rank 0 reports."""

    tracking_uri: str = ""
    experiment: str = "palsygan"
    run_name: str | None = None
    registered_model: str | None = "palsygan-stargan"
    artifact_location: str | None = None  # for a new experiment in a local store (a server decides itself)
    log_every: int = 10
    sample_every: int = 100
    sample_faces: int = 4


@dataclass(frozen=True)
class CheckpointConfig:
    """Where checkpoints go and how often."""

    directory: str = ""
    every: int = 100
    keep: int = 3
    log_to_tracking: bool = True


@dataclass(frozen=True)
class JobConfig:
    """One training job: the StarGAN config plus data, tracking, checkpoint and run settings."""

    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    threads: int = 0  # torch threads per worker; 0 = this host's cores / workers on it
    progress: bool = True
    device: str = "auto"  # "auto": the host's GPU of this worker's local rank when CUDA is up, else "cpu"
    cycle_time_ms: float | None = None  # Horovod negotiation cycle; None: CPU_CYCLE_TIME_MS on CPU, Horovod's own on GPU


# On CPU an iteration takes hundreds of ms: a 20 ms Horovod cycle costs little latency and frees the
# cores that 1 ms wake-ups take (horovodrun -np 2 on 2 cores: 1.4x -> 1.85x the images/s of -np 1).
CPU_CYCLE_TIME_MS = 20.0
DEVICES = ("auto", "cpu", "cuda")


def device_type(requested: str) -> str:
    """"cuda" or "cpu" for a --device value ("auto" picks CUDA when it is available)."""
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device on this host")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@dataclass(frozen=True)
class TrainResult:
    """What a finished job reports on every rank."""

    run_id: str | None
    start_step: int
    step: int
    metrics: dict
    model_version: str | None
    workers: int
    rank: int
    max_weight_diff: float


def model_metadata(cfg: TrainConfig, metadata: DatasetMetadata, dataset_url: str) -> dict:
    """What a checkpoint or logged model must carry to be used without the dataset."""
    return {
        "labels": list(metadata.labels),
        "c_dim": len(metadata.labels),
        "image_size": cfg.model.image_size,
        "multi_label": metadata.multi_label,
        "normalisation": "x / 127.5 - 1 (RGB, [-1, 1])",
        "schema_version": SCHEMA_VERSION,
        "dataset_url": dataset_url,
        "model": dataclasses.asdict(cfg.model),
    }


def flat_params(job: JobConfig) -> dict:
    """The job config as flat "section.name" params (for tracking)."""
    out = {}

    def walk(prefix: str, value) -> None:
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(f"{prefix}.{f.name}" if prefix else f.name, getattr(value, f.name))
        else:
            out[prefix] = value

    walk("", job)
    return out


def dataset_digest(dataset_url: str, metadata: DatasetMetadata) -> str:
    """A short digest naming this dataset version (metadata + schema)."""
    import hashlib

    return hashlib.sha256(f"{dataset_url}|{metadata.to_json()}".encode()).hexdigest()[:16]


class _Progress:
    """A progress bar on rank 0 (step, losses, images/s); nothing elsewhere."""

    def __init__(self, enabled: bool, start: int, total: int, images_per_step: int):
        self.bar = tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True) if enabled else None
        self.images_per_step = images_per_step
        self.last = (time.perf_counter(), start)

    def update(self, step: int, metrics: dict[str, float]) -> float:
        """Advance to step; return images/s since the previous update."""
        now = time.perf_counter()
        rate = (step - self.last[1]) * self.images_per_step / max(now - self.last[0], 1e-9)
        self.last = (now, step)
        if self.bar is not None:
            short = {k.replace("/loss_", "/"): f"{v:.3f}" for k, v in metrics.items()}
            self.bar.set_postfix(short, refresh=False)
            self.bar.set_postfix_str(f"{self.bar.postfix}, img/s={rate:.1f}", refresh=False)
            self.bar.update(step - self.bar.n)
        return rate

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train(job: JobConfig) -> TrainResult:
    """Train (or resume) one job to cfg.optim.num_iters; returns the same summary on every rank."""
    kind = device_type(job.device)
    cycle = job.cycle_time_ms if job.cycle_time_ms is not None else (CPU_CYCLE_TIME_MS if kind == "cpu" else None)
    workers = Workers(cycle_time_ms=cycle)
    device = torch.device("cuda", workers.local_rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    threads = job.threads or max(1, (torch.get_num_threads() or 1) // workers.local_size)
    torch.set_num_threads(threads)

    # The labels and their number come from the data, never from a flag.
    metadata = read_metadata(job.data.dataset_url)
    cfg = with_c_dim(job.train, len(metadata.labels))
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, multi_label=metadata.multi_label))
    if cfg.model.image_size > metadata.image_size:
        raise ValueError(f"the model is {cfg.model.image_size}px but the dataset's faces are "
                         f"{metadata.image_size}px: ingest with --size {cfg.model.image_size} or train smaller")
    meta = model_metadata(cfg, metadata, job.data.dataset_url)

    G, D = build_generator(cfg.model).to(device), build_discriminator(cfg.model).to(device)
    g_opt, d_opt = build_optimizers(G, D, cfg.optim)
    # Wrapped before a checkpoint is restored into them: Horovod's DistributedOptimizer is a new optimizer
    # built from the given one's param_groups, without its state (Adam's moments and step counts).
    g_opt = workers.distributed_optimizer(g_opt, G, prefix="G")
    d_opt = workers.distributed_optimizer(d_opt, D, prefix="D")
    gen = torch.Generator()  # on the CPU whatever the device: draws are moved, checkpoints stay portable

    # Resume: rank 0 loads the latest intact checkpoint; every rank gets its weights, state and step.
    start, run_id, problem = 0, None, None
    ckpt_dir = Path(job.checkpoint.directory)
    if workers.is_rank0:
        path = latest_checkpoint(ckpt_dir) if job.checkpoint.directory else None
        if path is not None:
            state = load_checkpoint(path)
            if state["model_meta"]["model"] != meta["model"] or state["model_meta"]["labels"] != meta["labels"]:
                problem = (f"{path} holds a different model or label set than this command asks for; "
                           f"pass another --checkpoint-dir to start a new run")
            else:
                start, run_id = restore_state(state, G, D, g_opt, d_opt, gen)
                log.info("resuming from %s at step %d", path, start)
    start, run_id, problem = workers.broadcast_object((start, run_id, problem), name="resume")
    if problem:
        raise ValueError(problem)
    if start >= cfg.optim.num_iters:
        log.info("the checkpoint in %s is already at step %d of %d: nothing to train", ckpt_dir, start,
                 cfg.optim.num_iters)
        return TrainResult(run_id=run_id, start_step=start, step=start, metrics={}, model_version=None,
                           workers=workers.size, rank=workers.rank, max_weight_diff=0.0)
    # Optimizer state only when resuming: a fresh one is empty on every rank already, and broadcasting it
    # would first initialise it with a zero-gradient step (Horovod's way), starting Adam's step counts at 1.
    workers.broadcast_training_state({"G": G, "D": D}, {"g_opt": g_opt, "d_opt": d_opt} if start else {})

    tracker = make_tracker(workers.is_rank0, job.tracking.tracking_uri, job.tracking.experiment,
                           job.tracking.run_name, run_id, artifact_location=job.tracking.artifact_location)
    if start == 0:
        tracker.log_params({**flat_params(job), "train.model.c_dim": cfg.model.c_dim,
                            "workers": workers.size, "threads_per_worker": threads, "device_type": kind})
        tracker.log_dataset(job.data.dataset_url, dataset_digest(job.data.dataset_url, metadata),
                            {"labels": list(metadata.labels), **metadata.counts})
    x_fixed = c_fixed = None
    if workers.is_rank0 and job.tracking.sample_every:
        split = SPLITS[1] if metadata.counts["originals"].get(SPLITS[1]) else SPLITS[0]
        x_fixed, c_fixed = fixed_faces(job.data.dataset_url, cfg.model.image_size, job.tracking.sample_faces, split)
        x_fixed, c_fixed = x_fixed.to(device), c_fixed.to(device)

    stream = open_stream(job.data, cfg.model.image_size, workers.rank, workers.size, metadata)
    progress = _Progress(job.progress and workers.is_rank0, start, cfg.optim.num_iters,
                         job.data.batch_size * workers.size)
    d_update = DeferredStep(d_opt)  # D's update waits in here while Horovod averages its gradients
    G.train(), D.train()
    metrics: dict[str, float] = {}
    window: dict[str, list[float]] = {}
    try:
        for step in range(start, cfg.optim.num_iters):
            batch = next(stream)
            # Random draws are a function of (seed, rank, step): a resumed run draws what it would have.
            gen.manual_seed(hash((job.seed, workers.rank, step)) & 0x7FFF_FFFF_FFFF)
            x_real = batch.x.to(device, non_blocking=True)
            c_org = batch.c.to(device, non_blocking=True)
            losses = train_iteration(G, D, g_opt, d_opt, x_real, c_org, step, cfg, gen, world_size=workers.size,
                                     d_update=d_update)
            for key, value in losses.items():
                window.setdefault(key, []).append(value)
            done = step + 1

            if done % job.tracking.log_every == 0 or done == cfg.optim.num_iters:
                metrics = workers.average({k: float(np.mean(v)) for k, v in window.items()})
                window = {}
                rate = progress.update(done, metrics)
                tracker.log_metrics({**metrics, "perf/images_per_s": rate,
                                     **{f"lr/{net}": lr_at(step, base_lr, cfg.optim, workers.size)
                                        for net, base_lr in (("G", cfg.optim.g_lr), ("D", cfg.optim.d_lr))}},
                                    step=done)
            if x_fixed is not None and done % job.tracking.sample_every == 0:
                tracker.log_image(sample_grid(G, x_fixed, list(metadata.labels), cfg.model.c_dim,
                                              metadata.multi_label, c_fixed=c_fixed), "samples", step=done)
            if job.checkpoint.directory and (done % job.checkpoint.every == 0 or done == cfg.optim.num_iters):
                d_update.apply()  # on every rank (the update waits for its allreduce): D is saved whole
                if workers.is_rank0:
                    path = save_checkpoint(ckpt_dir, make_state(done, G, D, g_opt, d_opt, gen, tracker.run_id,
                                                                meta, flat_params(job)),
                                           done, keep=job.checkpoint.keep)
                    if job.checkpoint.log_to_tracking and done == cfg.optim.num_iters:
                        tracker.log_artifact(path, "checkpoints")
        d_update.apply()
        progress.close()
        stream.close()

        # Every rank must hold the same weights: measure it (cheap, once) and record it.
        spread = {}
        for name, module in (("G", G), ("D", D)):
            gathered = workers.gather_flat_parameters(module, name=f"final.{name}")
            spread[f"dist/{name}_max_abs_diff"] = float((gathered - gathered[0]).abs().max())
        log.info("weights across %d workers: max |difference| G %.3g, D %.3g", workers.size,
                 spread["dist/G_max_abs_diff"], spread["dist/D_max_abs_diff"])
        tracker.log_metrics(spread, step=cfg.optim.num_iters)

        # The generator as a registered MLflow model, with its labels, size and normalisation.
        example = (x_fixed[:1].cpu().numpy() if x_fixed is not None
                   else np.zeros((1, 3, cfg.model.image_size, cfg.model.image_size), np.float32),
                   np.eye(cfg.model.c_dim, dtype=np.float32)[:1])
        version = tracker.log_generator(G, meta, example, job.tracking.registered_model)
        tracker.finish("FINISHED")
    except BaseException:
        progress.close()
        stream.close()
        tracker.finish("FAILED")
        raise
    return TrainResult(run_id=tracker.run_id, start_step=start, step=cfg.optim.num_iters, metrics=metrics,
                       model_version=version, workers=workers.size, rank=workers.rank,
                       max_weight_diff=max(spread.values()))
