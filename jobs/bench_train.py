"""Training benchmarks, each a ratio against a baseline measured in the same run (not timed tests).

    .venv/bin/python jobs/bench_train.py --dataset file:///abs/output/dataset --out output/bench_train.json \\
        [--dataset-x4 file:///abs/output/dataset_x4] [--only overhead,loader,scaling,memory]

- overhead: seconds per n_critic cycle through jobs/train.py (Petastorm streaming, Horovod with 1 rank,
  MLflow tracking on) against the bare loop of the same steps on tensors already in memory (target <= 1.10x).
- loader:   decoded images/s from the Petastorm stream against a plain pyarrow + cv2 loop over the same
  Parquet files (target >= 0.7x).
- scaling:  images/s of horovodrun -np 2 (1 thread each) against -np 1 (1 thread) (target >= 1.8x).
- memory:   peak RSS of training on the dataset and on a 4x larger one (target ratio <= 1.15), at the
  paper's 128x128, batch 16 (reference: 3.8 GiB).
The trainer's own throughput is its logged perf/images_per_s, median over the log windows after the first
WARM_UP_ITERS iterations (start-up, then the reader's queues filling); the bare loop skips as many.
Each timed comparison runs its two sides alternately --rounds times and reports the median of each side
(this machine's speed drifts by 10-20% between minutes: an A-then-B pair measured once is not a ratio);
"ratio" is the ratio of those medians, "paired_ratio" the median of the rounds' own ratios (each round's
two sides ran minutes apart, so it cancels slower drift).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
log = logging.getLogger("palsygan.bench_train")
PYTHON = sys.executable
HOROVODRUN = str(Path(PYTHON).with_name("horovodrun"))
SMALL = ["--preset", "cpu_small", "--batch-size", "16"]
PAPER = ["--preset", "paper", "--batch-size", "16"]
LOG_EVERY = 10
WARM_UP_ITERS = 30  # a multiple of LOG_EVERY: the first three log windows are warm-up


def run_trainer(dataset: str, work: Path, model: list[str], iters: int, workers: int, threads: int,
                log_every: int = LOG_EVERY, warm_up: int = WARM_UP_ITERS) -> dict:
    """Run jobs/train.py (under horovodrun when workers > 1); images/s per window and peak RSS per process."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    train = [PYTHON, str(REPO / "jobs" / "train.py"), "--dataset", dataset, *model, "--num-iters", str(iters),
             "--threads", str(threads), "--log-every", str(log_every), "--sample-every", "0",
             "--checkpoint-every", str(iters), "--tracking-uri", uri, "--checkpoint-dir", str(work / "ckpt"),
             "--registered-model", "", "--experiment", "bench", "--no-progress"]
    command = train if workers == 1 else [HOROVODRUN, "-np", str(workers), "-H", f"localhost:{workers}", *train]
    # A wrapper process whose RUSAGE_CHILDREN is this run's alone: the peak RSS of its largest process.
    wrapper = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
               "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    proc = subprocess.run([PYTHON, "-c", wrapper, *command], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed:\n{proc.stderr[-3000:]}")
    maxrss_kb = int(proc.stdout.split("MAXRSS_KB")[-1].split()[0])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("bench").experiment_id])[0]
    history = sorted(client.get_metric_history(run.info.run_id, "perf/images_per_s"), key=lambda m: m.step)
    rates = [m.value for m in history]
    steady = [m.value for m in history if m.step > warm_up]
    return {"images_per_s_windows": rates, "images_per_s": statistics.median(steady or rates),
            "peak_rss_gib": maxrss_kb / 2**20}


def bare_loop(model: list[str], iters: int, threads: int, c_dim: int, batch: int, warm_up: int) -> float:
    """Seconds per iteration of train_iteration on one in-memory batch (after warm_up iterations)."""
    import torch

    from jobs.train import build_job, parse_args
    from training.config import with_c_dim
    from training.models import build_discriminator, build_generator
    from training.steps import DeferredStep, build_optimizers, train_iteration

    torch.set_num_threads(threads)
    cfg = with_c_dim(build_job(parse_args([*model, "--num-iters", str(iters)])).train, c_dim)
    G, D = build_generator(cfg.model), build_discriminator(cfg.model)
    g_opt, d_opt = build_optimizers(G, D, cfg.optim)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, cfg.model.image_size, cfg.model.image_size) * 2 - 1
    c = torch.nn.functional.one_hot(torch.arange(batch) % c_dim, c_dim).float()
    d_update = DeferredStep(d_opt)  # as in the trainer
    for step in range(iters):
        if step == warm_up:
            start = time.perf_counter()
        train_iteration(G, D, g_opt, d_opt, x, c, step, cfg, gen, d_update=d_update)
    d_update.apply()
    return (time.perf_counter() - start) / (iters - warm_up)


def alternate(rounds: int, **sides) -> dict[str, list]:
    """Call each side's function in turn, ``rounds`` times over: every side's results, in order."""
    results: dict[str, list] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            results[name].append(fn())
    return results


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over rounds of each round's numerator / denominator."""
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def bench_overhead(args, work: Path, c_dim: int) -> dict:
    """Trainer (streaming + Horovod 1 rank + tracking) against the bare in-memory loop, same config."""
    iters = WARM_UP_ITERS + 60
    runs = alternate(
        args.rounds,
        trainer=lambda: 16 / run_trainer(args.dataset, work / f"overhead{time.monotonic_ns()}", SMALL, iters,
                                         workers=1, threads=2)["images_per_s"],
        bare=lambda: bare_loop(SMALL, iters, threads=2, c_dim=c_dim, batch=16, warm_up=WARM_UP_ITERS))
    trainer_s, bare_s = statistics.median(runs["trainer"]), statistics.median(runs["bare"])
    return {"config": "cpu_small 64x64 batch 16, 2 threads", "trainer_s_per_cycle": trainer_s * 5,
            "bare_s_per_cycle": bare_s * 5, "ratio": trainer_s / bare_s,
            "paired_ratio": paired_ratio(runs["trainer"], runs["bare"]), "target": "<= 1.10",
            "rounds_s_per_iter": runs}


def bench_loader(args, work: Path, c_dim: int, batches: int = 200) -> dict:
    """Petastorm stream (decode + batch) against pyarrow + cv2 over the same files."""
    import cv2
    import numpy as np
    import pyarrow.parquet as pq

    from etl.verify import read_metadata
    from training.data import DataConfig, open_stream

    metadata = read_metadata(args.dataset)
    size = metadata.image_size

    def petastorm_rate() -> float:
        # A new stream each round, closed before the other side runs: its reader threads neither decode
        # ahead between rounds nor take the plain loop's cores. Timing starts at its first batch (threads
        # started, shuffle buffer full); 200 batches are about four times what its queues and buffer hold.
        stream = open_stream(DataConfig(dataset_url=args.dataset, batch_size=16), size, rank=0, world_size=1,
                             metadata=metadata)
        try:
            next(stream)
            start = time.perf_counter()
            for _ in range(batches):
                next(stream)
            return batches * 16 / (time.perf_counter() - start)
        finally:
            stream.close()

    files = sorted(Path(args.dataset.removeprefix("file://"), "split=train").glob("*.parquet"))

    def plain_rate() -> float:
        start, decoded = time.perf_counter(), 0
        while decoded < batches * 16:
            for path in files:
                table = pq.read_table(path, columns=["image", "labels"])
                for png in table.column("image").to_pylist():
                    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR),
                                         cv2.COLOR_BGR2RGB)
                    decoded += image.shape[0] > 0
                if decoded >= batches * 16:
                    break
        return decoded / (time.perf_counter() - start)

    runs = alternate(args.rounds, petastorm=petastorm_rate, plain=plain_rate)
    petastorm, plain = statistics.median(runs["petastorm"]), statistics.median(runs["plain"])
    return {"petastorm_images_per_s": petastorm, "pyarrow_cv2_images_per_s": plain,
            "ratio": petastorm / plain, "paired_ratio": paired_ratio(runs["petastorm"], runs["plain"]),
            "target": ">= 0.7", "rounds_images_per_s": runs}


def bench_scaling(args, work: Path, c_dim: int) -> dict:
    """horovodrun -np 2 against -np 1, one thread per worker, same config."""
    def rate(workers: int) -> float:
        return run_trainer(args.dataset, work / f"np{workers}-{time.monotonic_ns()}", SMALL, WARM_UP_ITERS + 60,
                           workers=workers, threads=1)["images_per_s"]

    runs = alternate(args.rounds, np1=lambda: rate(1), np2=lambda: rate(2))
    one, two = statistics.median(runs["np1"]), statistics.median(runs["np2"])
    return {"np1_images_per_s": one, "np2_images_per_s": two, "ratio": two / one,
            "paired_ratio": paired_ratio(runs["np2"], runs["np1"]), "target": ">= 1.8",
            "rounds_images_per_s": runs}


def bench_memory(args, work: Path, c_dim: int) -> dict:
    """Peak RSS of paper-config training on the dataset and on its 4x version."""
    if not args.dataset_x4:
        return {"skipped": "no --dataset-x4 given"}
    x1 = run_trainer(args.dataset, work / "mem1", PAPER, 6, workers=1, threads=2, log_every=3, warm_up=0)
    x4 = run_trainer(args.dataset_x4, work / "mem4", PAPER, 6, workers=1, threads=2, log_every=3, warm_up=0)
    return {"x1_peak_rss_gib": x1["peak_rss_gib"], "x4_peak_rss_gib": x4["peak_rss_gib"],
            "ratio": x4["peak_rss_gib"] / x1["peak_rss_gib"], "target": "<= 1.15, and <= 3.8 GiB",
            "config": "paper 128x128 batch 16, 2 threads"}


BENCHES = {"overhead": bench_overhead, "loader": bench_loader, "scaling": bench_scaling, "memory": bench_memory}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and write their ratios as JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=(REPO / "output" / "dataset").as_uri())
    p.add_argument("--dataset-x4", help="the same source ingested with --augment-copies 3 where --dataset has 0 (4x the training rows)")
    p.add_argument("--only", default=",".join(BENCHES))
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two sides of each timed comparison")
    p.add_argument("--out", type=Path, default=REPO / "output" / "bench_train.json")
    args = p.parse_args(argv)
    from etl.verify import read_metadata

    c_dim = len(read_metadata(args.dataset).labels)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name in args.only.split(","):
            results[name] = BENCHES[name](args, Path(tmp), c_dim)
            log.info("%s: %s", name, json.dumps(results[name]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    log.info("written %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
