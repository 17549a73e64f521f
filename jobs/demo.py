"""The main job: ingest -> train -> evaluate -> translate on the bundled real sample, with embedded defaults.

    make demo                                   # sets up .venv once, then runs this
    .venv/bin/python jobs/demo.py [--output output] [--num-iters 300]

Defaults: Spark local[*] through spark-submit, horovodrun -np 2 on localhost with a 64x64 reduced
StarGAN, an SQLite MLflow store in output/. Each stage is a job of its own (see its docstring) and the
default paths of each line up with the next, so any stage can be rerun by hand with the command logged.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SAMPLE = REPO / "data" / "expressions-sample"
MODEL_NAME = "palsygan-stargan"
log = logging.getLogger("palsygan.demo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the demo."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=REPO / "output", help="folder for every stage's output")
    p.add_argument("--num-iters", type=int, default=300, help="training iterations")
    p.add_argument("--batch-size", type=int, default=8, help="faces per worker per iteration")
    p.add_argument("--workers", type=int, default=2, help="horovodrun -np")
    p.add_argument("--salt-file", type=Path, help="pseudonym salt (default: the ingest job's default)")
    return p.parse_args(argv)


def stage_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """Each stage's command line; every path is explicit so the stages line up whatever --output is."""
    out = args.output.resolve()
    python, bin_dir = sys.executable, Path(sys.executable).parent
    dataset = (out / "dataset").as_uri()
    tracking = f"sqlite:///{out / 'mlflow.db'}"
    salt = ["--salt-file", str(args.salt_file)] if args.salt_file else []
    every = max(1, args.num_iters // 5)
    return {
        "ingest": [str(bin_dir / "spark-submit"), "--master", "local[*]", str(REPO / "jobs" / "ingest.py"),
                   "--source", f"legend:{SAMPLE}", "--output", dataset, *salt],
        "train": [str(bin_dir / "horovodrun"), "-np", str(args.workers), "-H", f"localhost:{args.workers}",
                  python, str(REPO / "jobs" / "train.py"), "--dataset", dataset, "--preset", "cpu_small",
                  "--batch-size", str(args.batch_size), "--num-iters", str(args.num_iters),
                  "--log-every", str(max(1, min(10, every))), "--sample-every", str(every),
                  "--checkpoint-every", str(every), "--tracking-uri", tracking,
                  "--checkpoint-dir", str(out / "checkpoints"), "--registered-model", MODEL_NAME],
        "evaluate": [python, str(REPO / "jobs" / "evaluate.py"), "--dataset", dataset, "--tracking-uri", tracking,
                     "--model", f"models:/{MODEL_NAME}/latest", "--registered-model", MODEL_NAME,
                     "--output", str(out / "evaluation"), "--classifier-cache", str(out / "classifiers")],
        "translate": [python, str(REPO / "jobs" / "translate.py"), "--tracking-uri", tracking,
                      "--model", f"models:/{MODEL_NAME}@champion", "--output", str(out / "translations"),
                      "--paste-back"],
    }


def test_split_photo(args: argparse.Namespace) -> Path:
    """A bundled photo of a subject in the dataset's test split (never seen in training)."""
    from petastorm import make_reader

    from etl.pseudonym import DEFAULT_SALT_FILE, load_or_create_salt, pseudonym
    from schemas.faces import FaceFields

    salt = load_or_create_salt(args.salt_file or DEFAULT_SALT_FILE)
    with make_reader((args.output.resolve() / "dataset").as_uri(), schema_fields=[FaceFields.SOURCE_ID],
                     filters=[(FaceFields.SPLIT, "=", "test")], num_epochs=1, workers_count=1) as reader:
        test_ids = {row.source_id for row in reader}
    with open(SAMPLE / "legend.csv", newline="") as f:
        for row in csv.DictReader(f):
            if pseudonym(f"images/{row['image']}", salt, "f") in test_ids:
                return SAMPLE / "images" / row["image"]
    raise RuntimeError("no bundled photo belongs to the test split")


def run_stage(name: str, command: list[str]) -> None:
    """Run one stage, logging its exact command; raise when it fails."""
    log.info("stage %s: %s", name, shlex.join(command))
    if subprocess.run(command, cwd=REPO).returncode != 0:
        raise RuntimeError(f"stage {name} failed; rerun it with the command above")


def summary(args: argparse.Namespace, photo: Path) -> str:
    """What the demo produced: grids, ingest summary, key metrics, the MLflow UI command."""
    from mlflow.tracking import MlflowClient

    out = args.output.resolve()
    report = json.loads((out / "dataset_report.json").read_text())
    c = report["counts"]
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    metrics = client.get_run(version.run_id).data.metrics
    key = {k: round(v, 4) for k, v in sorted(metrics.items())
           if k.startswith("eval/") and "/" not in k[5:] or k in ("G/loss_rec", "D/loss_cls")}
    grids = sorted(str(p) for p in (out / "translations").rglob("*grid*.png"))
    return "\n".join([
        "palsygan demo finished",
        f"  ingest: {c['inputs']} photos -> {c['written']} faces + {c['quarantined']} quarantined "
        f"({report['per_reason'] or 'none'}); splits {report['per_split']}; report {out / 'dataset_report.json'}",
        f"  model: {MODEL_NAME} version {version.version} (alias champion), run {version.run_id}",
        f"  metrics: {key}",
        f"  translated test-split photo {photo.name}:",
        *[f"    {g}" for g in grids],
        "  open the MLflow UI (on 127.0.0.1 only):",
        f"    {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri sqlite:///{out / 'mlflow.db'} "
        f"--host 127.0.0.1 --port 5000",
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the four stages in order; stop at the first failure."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    args = parse_args(argv)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    args.output.mkdir(parents=True, exist_ok=True)
    commands = stage_commands(args)
    try:
        run_stage("ingest", commands["ingest"])
        run_stage("train", commands["train"])
        run_stage("evaluate", commands["evaluate"])
        photo = test_split_photo(args)
        run_stage("translate", [*commands["translate"], str(photo)])
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    log.info("%s", summary(args, photo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
