"""Benchmark decode+detect+align: Spark local[1] and local[2] against a plain single-process loop, one run.

    .venv/bin/python jobs/bench_ingest.py --source legend:../shared/data/expressions --limit 500 \\
        --out output/bench_ingest.json

All three run the same function (etl.process.process_record) over the same images, model loading
included; Spark is timed from job submission to the persisted result (session start-up excluded).
Targets: local[2] >= 1.8x the loop, local[1] >= 0.9x.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", category=FutureWarning)
log = logging.getLogger("palsygan.bench_ingest")


def plain_loop(scan, config) -> float:
    """Seconds for one process to run process_record over every record."""
    from etl.process import process_record

    start = time.perf_counter()
    for record in scan.records:
        process_record(scan.root, record, config)
    return time.perf_counter() - start


def spark_run(scan, config, master: str) -> float:
    """Seconds for Spark (given master) to process every record, session start-up excluded."""
    from pyspark.sql import SparkSession

    from etl.pipeline import extract, process

    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (SparkSession.builder.master(master).appName("bench-ingest")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        records, _, _ = extract(spark, scan, b"x" * 32)
        start = time.perf_counter()
        processed, _ = process(spark, records, scan.root, config)
        seconds = time.perf_counter() - start
        processed.unpersist()
    finally:
        spark.stop()
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and report images/s and ratios."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=f"legend:{REPO.parent / 'shared' / 'data' / 'expressions'}")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", type=Path, default=REPO / "output" / "bench_ingest.json")
    args = p.parse_args(argv)

    from etl.process import ProcessConfig
    from etl.sources import scan_source

    scan = scan_source(args.source)
    scan = dataclasses.replace(scan, records=scan.records[:args.limit], problems=[])
    config = ProcessConfig(size=args.size)
    n = len(scan.records)
    log.info("%d images from %s, %d cores", n, args.source, os.cpu_count())

    seconds = {"loop": plain_loop(scan, config)}
    for master in ("local[1]", "local[2]"):
        seconds[master] = spark_run(scan, config, master)
    rate = {k: n / v for k, v in seconds.items()}
    result = {
        "images": n, "size": args.size, "seconds": seconds, "images_per_second": rate,
        "ratio_vs_loop": {k: rate[k] / rate["loop"] for k in ("local[1]", "local[2]")},
        "targets": {"local[1]": 0.9, "local[2]": 1.8},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for k in seconds:
        log.info("%-9s %6.1f s  %6.2f images/s  %s", k, seconds[k], rate[k],
                 "" if k == "loop" else f"{result['ratio_vs_loop'][k]:.2f}x loop (target {result['targets'][k]}x)")
    log.info("written %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
