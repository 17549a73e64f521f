"""Benchmark decode+detect+align: Spark local[1] and local[2] against a plain single-process loop, one run.

    .venv/bin/python jobs/bench_ingest.py --source legend:../shared/data/expressions --limit 500 \\
        --out output/bench_ingest.json

All three run the same function (etl.process.process_record) over the same images, OpenCV on one thread
as in each Spark task; the warm rounds also time the loop with OpenCV's default threads ("loop_cv2_all_cores":
all the cores, for its few threaded calls, resizes and warps) and report ratios against it. "cold" includes
starting the workers and loading the dlib models (the loop: on its first images); "warm" is the same
work again once they are loaded, measured --rounds times, alternating with the loop, and reported as
medians (this machine's speed drifts by 10-20% between minutes). Spark is timed from job submission to
the persisted per-image results (etl.pipeline.process), session start-up excluded; turning them into a
DataFrame is the ingest job's next stage ("to_frame" in its report), not decode+detect+align; it is
timed too and reported beside, as the warm ratios with it counted in.
Targets: local[2] >= 1.8x the loop, local[1] >= 0.9x.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", category=FutureWarning)
log = logging.getLogger("palsygan.bench_ingest")
WARM_UP = 4
# The baseline, "loop", runs OpenCV on one thread like each Spark task (etl.process.process_partition);
# "loop_cv2_all_cores" leaves OpenCV its default, all the cores, for its few threaded calls.
LOOPS = {"loop": 1, "loop_cv2_all_cores": -1}


def plain_loop(scan, config, cv2_threads: int = 1, records=None) -> float:
    """Seconds for this process to run process_record over every record (or the given ones), OpenCV on
    cv2_threads threads (1, as in every Spark task; -1: OpenCV's default, all the cores)."""
    import cv2

    from etl.process import process_record

    previous = cv2.getNumThreads()
    cv2.setNumThreads(cv2_threads)
    try:
        start = time.perf_counter()
        for record in scan.records if records is None else records:
            process_record(scan.root, record, config)
        return time.perf_counter() - start
    finally:
        cv2.setNumThreads(previous)


def plain_loop_cold(scan, config) -> float:
    """The loop's seconds including loading the dlib models (on its first images)."""
    cold = plain_loop(scan, config, records=scan.records[:WARM_UP])  # loads the dlib models
    return cold + plain_loop(scan, config) * (len(scan.records) - WARM_UP) / len(scan.records)


def spark_runs(scan, config, master: str, rounds: int, loop_seconds: dict[str, list[float]],
               to_frame_seconds: list[float]) -> tuple[float, list[float]]:
    """Seconds for Spark (given master) to process every record, session start-up excluded: (cold, warm
    rounds); each warm round's DataFrame conversion goes to to_frame_seconds, and it is followed by a
    round of each loop (see LOOPS), appended to loop_seconds."""
    from pyspark.sql import SparkSession

    from etl.pipeline import as_frame, extract, process

    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (SparkSession.builder.master(master).appName("bench-ingest")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        seconds = []
        # Cold: the first job starts the Python workers, which load the dlib models.
        # Warm: the same job again on the same (now running) workers.
        for _ in range(1 + rounds):
            records, _, _ = extract(spark, scan, b"x" * 32)
            start = time.perf_counter()
            processed, _ = process(spark, records, scan.root, config)
            seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            frame = as_frame(spark, processed)
            converted = time.perf_counter() - start
            frame.unpersist()
            if len(seconds) > 1:
                to_frame_seconds.append(converted)
                for name, threads in LOOPS.items():
                    loop_seconds[name].append(plain_loop(scan, config, threads))
    finally:
        spark.stop()
    return seconds[0], seconds[1:]


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and report images/s and ratios."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=f"legend:{REPO.parent / 'shared' / 'data' / 'expressions'}")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="warm measurements of each side")
    p.add_argument("--out", type=Path, default=REPO / "output" / "bench_ingest.json")
    args = p.parse_args(argv)

    from etl.process import ProcessConfig
    from etl.sources import scan_source

    scan = scan_source(args.source)
    scan = dataclasses.replace(scan, records=scan.records[:args.limit], problems=[])
    config = ProcessConfig(size=args.size)
    n = len(scan.records)
    log.info("%d images from %s, %d cores", n, args.source, os.cpu_count())

    loop_warm: dict[str, list[float]] = {name: [] for name in LOOPS}
    cold = {"loop": plain_loop_cold(scan, config)}
    warm, to_frame = {}, {}
    for master in ("local[1]", "local[2]"):
        to_frame[master] = []
        cold[master], warm[master] = spark_runs(scan, config, master, args.rounds, loop_warm, to_frame[master])
    warm.update(loop_warm)
    targets = {"local[1]": 0.9, "local[2]": 1.8}
    # The same warm rounds with the next stage (the results as a DataFrame) counted in.
    with_frame = {k: [a + b for a, b in zip(warm[k], to_frame[k])] for k in targets}
    result = {"images": n, "size": args.size, "targets": targets, "rounds": args.rounds,
              "warm_rounds_seconds": warm, "warm_rounds_to_frame_seconds": to_frame,
              "warm_with_to_frame_ratio_vs_loop": {
                  k: statistics.median(loop_warm["loop"]) / statistics.median(v) for k, v in with_frame.items()}}
    for phase, seconds in (("cold", cold), ("warm", {k: statistics.median(v) for k, v in warm.items()})):
        rate = {k: n / v for k, v in seconds.items()}
        result[phase] = {"seconds": seconds, "images_per_second": rate,
                         "ratio_vs_loop": {k: rate[k] / rate["loop"] for k in targets}}
        if "loop_cv2_all_cores" in rate:
            result[phase]["ratio_vs_loop_cv2_all_cores"] = {k: rate[k] / rate["loop_cv2_all_cores"] for k in targets}
        for k in rate:
            log.info("%s %-18s %6.1f s  %6.2f images/s  %s", phase, k, seconds[k], rate[k],
                     f"{rate[k] / rate['loop']:.2f}x loop" + (f" (target {targets[k]}x)" if k in targets else ""))
    for k, ratio in result["warm_with_to_frame_ratio_vs_loop"].items():
        log.info("warm %-9s with the DataFrame conversion: %.2fx loop", k, ratio)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    log.info("written %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
