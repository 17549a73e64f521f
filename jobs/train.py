"""Train StarGAN on a Petastorm face dataset with Horovod, tracked in MLflow, resumable.

    horovodrun -np 2 -H localhost:2 python jobs/train.py --dataset file:///abs/output/dataset --preset cpu_small
    horovodrun -np 8 -H host1:4,host2:4 python jobs/train.py --dataset hdfs:///faces --preset paper \\
        --tracking-uri http://mlflow-host:5000 --checkpoint-dir /shared/ckpt/run1
    python jobs/train.py --num-iters 20          # one worker, no launcher

Re-running the same command resumes from the newest intact checkpoint in --checkpoint-dir (same step,
learning rate and optimizer state on every rank, same MLflow run). Rank 0 owns tracking, checkpoints
and the progress bar. Label names and their number come from the dataset's metadata.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
warnings.filterwarnings("ignore", category=FutureWarning)  # petastorm 0.12 on pyarrow 14's legacy API

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
OUTPUT = REPO / "output"
log = logging.getLogger("palsygan.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the training job."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=(OUTPUT / "dataset").as_uri(), help="Petastorm dataset URL (from ingest)")
    p.add_argument("--preset", default="paper", help="paper (128px, 64 ch, 6 blocks) or cpu_small (64px)")
    m = p.add_argument_group("model (override the preset)")
    for name in ("image_size", "g_conv_dim", "d_conv_dim", "g_repeat_num", "d_repeat_num"):
        m.add_argument("--" + name.replace("_", "-"), type=int)
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=16)
    o.add_argument("--num-iters", type=int, help="total iterations (default: the preset's 200000)")
    o.add_argument("--num-iters-decay", type=int, help="iterations of linear lr decay at the end (default: half)")
    o.add_argument("--n-critic", type=int)
    o.add_argument("--g-lr", type=float)
    o.add_argument("--d-lr", type=float)
    o.add_argument("--lambda-cls", type=float)
    o.add_argument("--lambda-rec", type=float)
    o.add_argument("--lambda-gp", type=float)
    o.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    o.add_argument("--scale-lr", action="store_true", help="multiply learning rates by the number of workers")
    o.add_argument("--balance-classes", action="store_true", help="class-balanced sampling of the stream")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: cores / local workers)")
    o.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: each worker uses the GPU of its local rank when CUDA is available, else the CPU")
    t = p.add_argument_group("tracking and checkpoints")
    t.add_argument("--tracking-uri", default=f"sqlite:///{OUTPUT / 'mlflow.db'}",
                   help="MLflow store: sqlite:///path (default, in output/) or http://host:port")
    t.add_argument("--experiment", default="palsygan")
    t.add_argument("--run-name")
    t.add_argument("--registered-model", default="palsygan-stargan", help="model registry name ('' to skip)")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--sample-every", type=int, default=100, help="sample grid every N iterations (0: never)")
    t.add_argument("--checkpoint-dir", type=Path, default=OUTPUT / "checkpoints")
    t.add_argument("--checkpoint-every", type=int, default=100)
    t.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def build_job(args: argparse.Namespace):
    """The one frozen JobConfig of this run, from a preset and the overrides given."""
    from training.config import preset
    from training.data import DataConfig
    from training.trainer import CheckpointConfig, JobConfig, TrackingConfig

    def override(section, **values):
        given = {k: v for k, v in values.items() if v is not None}
        return dataclasses.replace(section, **given)

    base = preset(args.preset)
    model = override(base.model, image_size=args.image_size, g_conv_dim=args.g_conv_dim,
                     d_conv_dim=args.d_conv_dim, g_repeat_num=args.g_repeat_num, d_repeat_num=args.d_repeat_num)
    num_iters = args.num_iters or base.optim.num_iters
    decay = args.num_iters_decay if args.num_iters_decay is not None else (
        num_iters // 2 if args.num_iters else base.optim.num_iters_decay)
    optim = override(base.optim, num_iters=num_iters, num_iters_decay=decay, n_critic=args.n_critic,
                     g_lr=args.g_lr, d_lr=args.d_lr, scale_lr_by_workers=args.scale_lr or None)
    loss = override(base.loss, lambda_cls=args.lambda_cls, lambda_rec=args.lambda_rec, lambda_gp=args.lambda_gp)
    dataset = args.dataset if "://" in args.dataset else Path(args.dataset).resolve().as_uri()
    # A local SQLite store keeps its artifacts beside it (not in ./mlruns of whatever folder we run in).
    artifacts = (Path(args.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri() \
        if args.tracking_uri.startswith("sqlite:///") else None
    return JobConfig(
        train=dataclasses.replace(base, model=model, optim=optim, loss=loss, precision=args.precision),
        data=DataConfig(dataset_url=dataset, batch_size=args.batch_size, balance_classes=args.balance_classes,
                        seed=args.seed),
        tracking=TrackingConfig(tracking_uri=args.tracking_uri, experiment=args.experiment, run_name=args.run_name,
                                registered_model=args.registered_model or None, artifact_location=artifacts,
                                log_every=args.log_every,
                                sample_every=args.sample_every),
        checkpoint=CheckpointConfig(directory=str(args.checkpoint_dir.resolve()), every=args.checkpoint_every),
        seed=args.seed, threads=args.threads, progress=not args.no_progress, device=args.device,
    )


def main(argv: list[str] | None = None) -> int:
    """Build the config and train; 0 on success, 2 on a configuration or dataset error."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    args = parse_args(argv)
    from training.trainer import train

    try:
        job = build_job(args)
    except (KeyError, ValueError) as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    if args.tracking_uri.startswith("sqlite:///"):
        Path(args.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        result = train(job)
    except (ValueError, FileNotFoundError) as exc:
        log.error("training stopped: %s", exc)
        return 2
    if result.rank == 0:
        log.info("finished at step %d (started at %d) on %d workers; run %s; model version %s; metrics %s",
                 result.step, result.start_step, result.workers, result.run_id, result.model_version,
                 {k: round(v, 4) for k, v in result.metrics.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
