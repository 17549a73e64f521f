"""Ingest a face-image database into an aligned, normalised, augmented Petastorm dataset.

    spark-submit jobs/ingest.py --source legend:data/expressions-sample --output file:///abs/output/dataset
    python jobs/ingest.py --source legend:data/expressions-sample            # local[*], default paths
    spark-submit --master spark://host:7077 jobs/ingest.py --source folders:/shared/db --output hdfs:///faces

Layouts: legend:DIR (legend.csv naming images and labels), folders:DIR (DIR/<label>/<file>),
celeba:DIR (list_attr_celeba.txt), fer2013:DIR (fer2013.csv), pattern:DIR with --pattern REGEX.
The source must be readable at the same path from every executor (a shared file system on a cluster).
Outputs: the dataset, a quarantine table of every input not written and why, and a JSON report.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# petastorm 0.12 drives pyarrow 14's legacy dataset API, which warns on every call (see DESIGN.md pins).
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # spark-submit runs this file directly: make the project's packages importable
    sys.path.insert(0, str(REPO))
DEFAULT_OUTPUT = (REPO / "output" / "dataset").as_uri()
log = logging.getLogger("palsygan.ingest")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the ingest job."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--source", required=True, help="LAYOUT:PATH, e.g. legend:data/expressions-sample")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="dataset URL (file://, hdfs://, s3://...)")
    p.add_argument("--quarantine", help="quarantine table URL (default: OUTPUT_quarantine)")
    p.add_argument("--report", type=Path, help="JSON report path (default: beside a file:// OUTPUT)")
    p.add_argument("--master", help="Spark master (default: spark-submit's, else local[*])")
    p.add_argument("--size", type=int, default=128, help="side of the aligned face crop in pixels")
    face = p.add_argument_group("faces")
    face.add_argument("--on-multiple", choices=["largest", "reject"], default="largest",
                      help="several faces in a photo: keep the largest, or reject the photo")
    face.add_argument("--on-no-face", choices=["reject", "whole_image"], default="reject",
                      help="no face found: reject, or treat the (tightly cropped) image as the face")
    face.add_argument("--min-face-size", type=int, default=32, help="smallest face box side, in pixels")
    face.add_argument("--max-pixels", type=int, default=40_000_000, help="decompression-bomb limit")
    split = p.add_argument_group("split and augmentation")
    split.add_argument("--val-fraction", type=float, default=0.1)
    split.add_argument("--test-fraction", type=float, default=0.1)
    split.add_argument("--seed", type=int, default=0, help="fixes the subject split and the augmentation")
    split.add_argument("--augment-copies", type=int, default=1, help="augmented copies per training face")
    split.add_argument("--oversample-to", type=int, default=0,
                       help="add augmented copies of rare labels up to this many training rows per label")
    split.add_argument("--labels", help="comma-separated labels to keep (default: all present)")
    src = p.add_argument_group("source layout options")
    src.add_argument("--image-column", help="legend: column naming the image file")
    src.add_argument("--label-columns", help="legend: comma-separated label column(s)")
    src.add_argument("--subject-column", help="legend: column holding the person's id")
    src.add_argument("--subject-pattern", help="regex with a (?P<subject>...) group applied to file names")
    src.add_argument("--pattern", help="pattern layout: regex with (?P<subject>...) and (?P<label>...) groups")
    src.add_argument("--attributes", help="celeba: comma-separated attributes to keep")
    out = p.add_argument_group("output")
    out.add_argument("--min-row-groups", type=int, default=16,
                     help="files per split written, so that this many readers each get data")
    out.add_argument("--salt-file", type=Path, help="secret salt of the pseudonyms (default ~/.config/palsygan/salt)")
    out.add_argument("--bind-address", default="127.0.0.1", help="address the Spark driver binds to")
    out.add_argument("--ui", action="store_true", help="start the Spark web UI (off by default)")
    return p.parse_args(argv)


def source_options(args: argparse.Namespace) -> dict:
    """Layout keyword options given on the command line."""
    options = {
        "image_column": args.image_column,
        "label_columns": tuple(args.label_columns.split(",")) if args.label_columns else None,
        "subject_column": args.subject_column,
        "subject_pattern": args.subject_pattern,
        "pattern": args.pattern,
        "attributes": tuple(args.attributes.split(",")) if args.attributes else None,
    }
    return {k: v for k, v in options.items() if v is not None}


def build_config(args: argparse.Namespace):
    """The frozen IngestConfig of this run."""
    from etl.augment import AugmentConfig
    from etl.face import FacePolicy
    from etl.pipeline import IngestConfig
    from etl.process import ProcessConfig
    from etl.split import SplitConfig

    output = args.output if "://" in args.output else Path(args.output).resolve().as_uri()
    return IngestConfig(
        output_url=output,
        quarantine_url=args.quarantine or output.rstrip("/") + "_quarantine",
        process=ProcessConfig(size=args.size, max_pixels=args.max_pixels,
                              policy=FacePolicy(on_multiple=args.on_multiple, on_none=args.on_no_face,
                                                min_face_size=args.min_face_size)),
        split=SplitConfig(val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed),
        augment=AugmentConfig(),
        augment_copies=args.augment_copies,
        oversample_to=args.oversample_to,
        labels=tuple(args.labels.split(",")) if args.labels else None,
        min_row_groups=args.min_row_groups,
        augment_seed=args.seed,
    )


def report_path(args: argparse.Namespace, output_url: str) -> Path:
    """Where the JSON report goes: --report, else beside a local dataset, else the working folder."""
    if args.report:
        return args.report
    parsed = urlparse(output_url)
    if parsed.scheme == "file":
        return Path(parsed.path.rstrip("/") + "_report.json")
    return Path("ingest_report.json")


def spark_session(args: argparse.Namespace):
    """The job's SparkSession: spark-submit's master if any, else --master or local[*]."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = SparkConf()
    if args.master:
        conf.setMaster(args.master)
    elif "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Not launched by spark-submit (which passes its --master to the JVM it starts): run locally.
        conf.setMaster("local[*]")
    conf.setIfMissing("spark.app.name", "palsygan-ingest")
    conf.setIfMissing("spark.driver.bindAddress", args.bind_address)
    conf.setIfMissing("spark.driver.host", args.bind_address)
    conf.setIfMissing("spark.ui.enabled", "true" if args.ui else "false")
    conf.setIfMissing("spark.ui.showConsoleProgress", "true")
    conf.setIfMissing("spark.sql.shuffle.partitions", "16")
    spark = SparkSession.builder.config(conf=conf).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if not spark.sparkContext.master.startswith("local"):
        ship_packages(spark)
    return spark


def ship_packages(spark) -> None:
    """Send the project's packages to the executors (the --py-files equivalent for a cluster)."""
    archive = Path(tempfile.mkdtemp(prefix="palsygan-")) / "palsygan_packages.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for package in ("etl", "schemas"):
            for path in (REPO / package).rglob("*.py"):
                zf.write(path, path.relative_to(REPO).as_posix())
    spark.sparkContext.addPyFile(str(archive))
    log.info("shipped etl/ and schemas/ to the executors as %s", archive.name)


def summary(report: dict) -> str:
    """A short human summary of the ingest report."""
    c = report["counts"]
    lines = [
        f"inputs {c['inputs']} = written {c['written']} + quarantined {c['quarantined']} "
        f"(of which {c['duplicates_merged']} duplicates merged): "
        + ("reconciled" if c["reconciled"] else "NOT RECONCILED"),
        f"dataset rows {c['rows_in_dataset']} (augmented copies {c['augmented_copies']}); "
        f"splits {report['per_split']}; labels {', '.join(report['labels'])}",
        f"quarantine by reason: {report['per_reason'] or 'none'}",
        f"decode+detect+align: {report['images_per_second']['process']:.1f} images/s; "
        f"total {sum(report['seconds']['wall'].values()):.1f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Scan the source, run the Spark pipeline, write the report; 0 on success, 2 on a bad source."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    args = parse_args(argv)
    from etl.pipeline import ingest
    from etl.pseudonym import DEFAULT_SALT_FILE, load_or_create_salt
    from etl.sources import SourceError, scan_source

    try:
        config = build_config(args)
        scan = scan_source(args.source, **source_options(args))
    except (SourceError, KeyError, ValueError, TypeError) as exc:
        log.error("cannot ingest %s: %s", args.source, exc)
        return 2
    salt = load_or_create_salt(args.salt_file or DEFAULT_SALT_FILE)
    spark = spark_session(args)
    try:
        report = ingest(spark, scan, salt, config)
    finally:
        spark.stop()
    report["source"] = args.source
    path = report_path(args, config.output_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
    log.info("ingest finished\n%s\nreport: %s", summary(report), path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
