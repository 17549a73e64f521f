"""Benchmark one StarGAN n_critic cycle (n_critic D updates + 1 G update) on CPU, fp32 vs bf16 autocast.

    .venv/bin/python jobs/bench_model_step.py --out bench_model_step.json

Every (image size, precision) runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own.
Data are random tensors in memory (batch 16, c_dim 8); the models are the paper's (conv dims 64,
6 residual blocks, 6 D layers; at 64x64 the same widths, i.e. the official code run with
--image_size 64, whose classification head is then 1x1). Each worker times `--cycles` cycles of
`training.steps.train_iteration` after `--warmup-iters` iterations (each one D and one G update),
in wall and in process CPU seconds (the latter less disturbed by other jobs on a shared machine; the
load average is recorded too), and times one gradient penalty (forward + double backward) to show
its share of a D update. `--channels-last` runs models and batches in channels_last.
A loss-tracking run then trains `--track-cycles` cycles from the same init on the same batches in
fp32 and in bf16 and reports both loss curves and their largest differences.

Reference (official StarGAN code, same machine kind, 2 threads): 44.1 s/cycle and 3.8 GiB at
128x128; 18.6 s/cycle and 2.1 GiB at 64x64. Target: <= 0.8x of those. Results go to --out as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import ModelConfig, TrainConfig  # noqa: E402
from training.losses import gradient_penalty  # noqa: E402
from training.models import build_discriminator, build_generator, count_parameters  # noqa: E402
from training.steps import autocast_for, build_optimizers, make_target_labels, train_iteration  # noqa: E402

log = logging.getLogger("bench_model_step")

# Official StarGAN code on the same machine kind: seconds per n_critic cycle, peak RSS in GiB.
REFERENCE = {128: {"s_per_cycle": 44.1, "peak_rss_gib": 3.8}, 64: {"s_per_cycle": 18.6, "peak_rss_gib": 2.1}}
TARGET_RATIO = 0.8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (the --worker-* options are for the per-config subprocesses)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    p.add_argument("--image-sizes", default="128,64", help="comma-separated image sizes")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--c-dim", type=int, default=8)
    p.add_argument("--conv-dim", type=int, default=64, help="g_conv_dim and d_conv_dim")
    p.add_argument("--g-repeat-num", type=int, default=6)
    p.add_argument("--d-repeat-num", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cycles", type=int, default=1, help="timed cycles per config")
    p.add_argument("--warmup-iters", type=int, default=1, help="untimed D+G iterations before timing")
    p.add_argument("--channels-last", action="store_true", help="models and batches in channels_last")
    p.add_argument("--no-gp-timing", action="store_true", help="skip timing the gradient penalty alone")
    p.add_argument("--track-cycles", type=int, default=3, help="fp32-vs-bf16 loss-tracking cycles (0: skip)")
    p.add_argument("--track-image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=["time", "track"], help=argparse.SUPPRESS)
    p.add_argument("--worker-image-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-precision", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_config(args: argparse.Namespace, image_size: int, precision: str) -> TrainConfig:
    """The benchmarked configuration: paper defaults at the given size and precision."""
    model = ModelConfig(
        image_size=image_size,
        c_dim=args.c_dim,
        g_conv_dim=args.conv_dim,
        d_conv_dim=args.conv_dim,
        g_repeat_num=args.g_repeat_num,
        d_repeat_num=args.d_repeat_num,
    )
    return TrainConfig(model=model, precision=precision)


def make_batch(args: argparse.Namespace, image_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image batch in [-1, 1] and one-hot labels."""
    x = torch.rand(args.batch_size, 3, image_size, image_size, generator=gen) * 2 - 1
    c_org = F.one_hot(torch.randint(args.c_dim, (args.batch_size,), generator=gen), args.c_dim).float()
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, c_org


def build(args: argparse.Namespace, cfg: TrainConfig):
    """Models (seeded from args.seed without touching the global RNG) and their optimizers."""
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        G, D = build_generator(cfg.model), build_discriminator(cfg.model)
    if args.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    g_opt, d_opt = build_optimizers(G, D, cfg.optim)
    return G, D, g_opt, d_opt


def peak_rss_gib() -> float:
    """This process's peak resident set size in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_worker(args: argparse.Namespace) -> dict:
    """Time warm-up, n_critic cycles and one gradient penalty for one (image size, precision)."""
    image_size, precision = args.worker_image_size, args.worker_precision
    cfg = make_config(args, image_size, precision)
    n_critic = cfg.optim.n_critic
    G, D, g_opt, d_opt = build(args, cfg)
    gen = torch.Generator().manual_seed(args.seed)
    x_real, c_org = make_batch(args, image_size, gen)
    result = {
        "image_size": image_size,
        "precision": precision,
        "params_G": count_parameters(G),
        "params_D": count_parameters(D),
        "rss_after_build_gib": peak_rss_gib(),
        "loadavg_at_start": os.getloadavg(),
    }

    # Warm up: iterations with both a D and a G update (oneDNN primitive creation, compilation).
    t0 = time.perf_counter()
    for _ in range(args.warmup_iters):
        train_iteration(G, D, g_opt, d_opt, x_real, c_org, n_critic - 1, cfg, gen)
    result["warmup_s"] = time.perf_counter() - t0
    log.info("%dpx %s: warm-up %.1f s", image_size, precision, result["warmup_s"])

    # Timed cycles: n_critic iterations, the last one with the G update.
    cycles = []
    for cycle in range(args.cycles):
        # CPU seconds (all of this process's threads) are less sensitive than wall time to a shared machine.
        iter_s, iter_cpu_s = [], []
        for i in range(n_critic):
            t, cpu = time.perf_counter(), time.process_time()
            metrics = train_iteration(G, D, g_opt, d_opt, x_real, c_org, cycle * n_critic + i, cfg, gen)
            iter_s.append(time.perf_counter() - t)
            iter_cpu_s.append(time.process_time() - cpu)
        cycles.append({"s": sum(iter_s), "cpu_s": sum(iter_cpu_s), "iter_s": iter_s, "iter_cpu_s": iter_cpu_s,
                       "losses": metrics})
        log.info("%dpx %s: cycle %.1f s, %.1f CPU s (iterations %s)", image_size, precision, sum(iter_s),
                 sum(iter_cpu_s), ", ".join(f"{s:.1f}" for s in iter_s))
    result["cycles"] = cycles
    result["s_per_cycle"] = min(c["s"] for c in cycles)
    result["cpu_s_per_cycle"] = min(c["cpu_s"] for c in cycles)
    # An iteration without the G update is one D update; the last one's excess is the G update.
    for unit in ("s", "cpu_s"):
        d_only = [s for c in cycles for s in c[f"iter_{unit}"][:-1]]
        if d_only:
            result[f"d_iter_{unit}"] = sum(d_only) / len(d_only)
            result[f"g_update_{unit}"] = sum(c[f"iter_{unit}"][-1] for c in cycles) / len(cycles) - result[f"d_iter_{unit}"]

    # The gradient penalty alone: D forward on interpolates, input gradient, norm, double backward.
    if not args.no_gp_timing:
        c_trg = make_target_labels(c_org, gen, multi_label=False)
        alpha = torch.rand(x_real.size(0), 1, 1, 1, generator=gen)

        with torch.no_grad(), autocast_for("cpu", precision):
            x_fake = G(x_real, c_trg)
        t, cpu = time.perf_counter(), time.process_time()
        with autocast_for("cpu", precision):
            d_loss_gp = gradient_penalty(D, x_real, x_fake, alpha)
        d_loss_gp.backward()
        result["gp_s"], result["gp_cpu_s"] = time.perf_counter() - t, time.process_time() - cpu
        if result.get("d_iter_cpu_s"):
            result["gp_share_of_d_iter_cpu"] = result["gp_cpu_s"] / result["d_iter_cpu_s"]
        log.info("%dpx %s: gradient penalty fwd+bwd %.1f s, %.1f CPU s (%.0f%% of a D update's CPU time)",
                 image_size, precision, result["gp_s"], result["gp_cpu_s"],
                 100 * result.get("gp_share_of_d_iter_cpu", float("nan")))

    result["peak_rss_gib"] = peak_rss_gib()
    result["loadavg_at_end"] = os.getloadavg()
    ref = REFERENCE.get(image_size)
    if ref and args.batch_size == 16 and args.conv_dim == 64 and args.g_repeat_num == 6:
        result["ratio_s_vs_reference"] = result["s_per_cycle"] / ref["s_per_cycle"]
        result["ratio_rss_vs_reference"] = result["peak_rss_gib"] / ref["peak_rss_gib"]
    return result


def track_worker(args: argparse.Namespace) -> dict:
    """Train track_cycles cycles from the same init on the same batches; return every iteration's losses."""
    cfg = make_config(args, args.worker_image_size, args.worker_precision)
    G, D, g_opt, d_opt = build(args, cfg)
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    t0 = time.perf_counter()
    for step in range(args.track_cycles * cfg.optim.n_critic):
        x_real, c_org = make_batch(args, args.worker_image_size, data_gen)
        history.append(train_iteration(G, D, g_opt, d_opt, x_real, c_org, step, cfg, gen))
    return {"precision": args.worker_precision, "history": history, "s": time.perf_counter() - t0}


def run_worker(args: argparse.Namespace, mode: str, image_size: int, precision: str, argv: list[str]) -> dict:
    """Run one measurement in a fresh interpreter and return its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, *argv, "--worker", mode, "--worker-image-size", str(image_size),
               "--worker-precision", precision, "--worker-out", str(out)]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def compare_tracks(fp32: list[dict], bf16: list[dict]) -> dict:
    """Per-key largest absolute and relative (to |fp32|, over values with |fp32| >= 0.01) differences."""
    summary = {}
    for key in fp32[0].keys() | {k for m in fp32 for k in m}:
        pairs = [(a[key], b[key]) for a, b in zip(fp32, bf16) if key in a]
        rel = [abs(a - b) / abs(a) for a, b in pairs if abs(a) >= 0.01]
        summary[key] = {
            "max_abs_diff": max(abs(a - b) for a, b in pairs),
            "max_rel_diff": max(rel) if rel else None,
        }
    rels = [v["max_rel_diff"] for v in summary.values() if v["max_rel_diff"] is not None]
    return {"per_key": summary, "max_rel_diff": max(rels) if rels else None}


def cpu_report() -> dict:
    """What this CPU and torch build offer for bf16."""
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": load,
    }


def main(argv: list[str] | None = None) -> None:
    """Run every configuration in its own subprocess, then the loss-tracking comparison."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    if args.worker:
        result = time_worker(args) if args.worker == "time" else track_worker(args)
        args.worker_out.write_text(json.dumps(result))
        return

    results = {"args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu_report(),
               "reference": REFERENCE, "target_ratio": TARGET_RATIO, "runs": []}
    log.info("cpu: %s", results["cpu"])
    t0 = time.perf_counter()
    for image_size in (int(s) for s in args.image_sizes.split(",") if s):
        for precision in (p for p in args.precisions.split(",") if p):
            run = run_worker(args, "time", image_size, precision, argv)
            results["runs"].append(run)
            log.info(
                "%dpx %s: %.1f s/cycle (%s vs reference), peak RSS %.2f GiB (%s vs reference)",
                image_size, precision, run["s_per_cycle"],
                f"{run['ratio_s_vs_reference']:.2f}x" if "ratio_s_vs_reference" in run else "n/a",
                run["peak_rss_gib"],
                f"{run['ratio_rss_vs_reference']:.2f}x" if "ratio_rss_vs_reference" in run else "n/a",
            )

    if args.track_cycles > 0:
        tracks = {p: run_worker(args, "track", args.track_image_size, p, argv) for p in ("fp32", "bf16")}
        fp32, bf16 = tracks["fp32"]["history"], tracks["bf16"]["history"]
        for step, (a, b) in enumerate(zip(fp32, bf16)):
            log.info("track step %d: %s", step,
                     "  ".join(f"{k} {a[k]:.4f}/{b[k]:.4f}" for k in sorted(a)))
        comparison = compare_tracks(fp32, bf16)
        results["track"] = {"image_size": args.track_image_size, "fp32": fp32, "bf16": bf16,
                            "s": {p: t["s"] for p, t in tracks.items()}, **comparison}
        log.info("track: max relative difference bf16 vs fp32 %.4f (per key: %s)", comparison["max_rel_diff"] or 0,
                 {k: v["max_rel_diff"] for k, v in comparison["per_key"].items()})

    results["cpu"]["loadavg_at_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    log.info("wrote %s (%.0f s in all)", args.out, results["total_s"])


if __name__ == "__main__":
    main()
