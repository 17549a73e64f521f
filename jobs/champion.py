"""Give the registry alias "champion" to the model version whose evaluation is best by one metric.

    python jobs/champion.py                                             # by eval/target_accuracy_balanced
    python jobs/champion.py --metric eval/identity_same_person_rate
    python jobs/champion.py --metric eval/asymmetry_change/mouth_corner_height_diff --goal min
    python jobs/champion.py --registered-model palsygan-stargan --tracking-uri http://127.0.0.1:5000

Each version is judged by the metric in its source run (logged there by jobs/evaluate.py, which also
calls this after every evaluation); versions without it are skipped; among equal values the newest
version wins. jobs/translate.py uses models:/palsygan-stargan@champion by default. Exit status 0, or 2
when the model has no versions, no version has the metric, or the metric's goal is unknown.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
OUTPUT = REPO / "output"
log = logging.getLogger("palsygan.champion")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the champion job."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registered-model", default="palsygan-stargan")
    p.add_argument("--metric", default="eval/target_accuracy_balanced")
    p.add_argument("--goal", choices=["max", "min"], help="default: the metric's known goal")
    p.add_argument("--alias", default="champion")
    p.add_argument("--tracking-uri", default=f"sqlite:///{OUTPUT / 'mlflow.db'}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Move the alias; 0 on success, 2 when there is nothing to choose from or the goal is unknown."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    args = parse_args(argv)
    from training.evaluation import goal_of
    from training.registry import ModelNotFound, set_champion, use_tracking_uri

    try:
        goal = args.goal or goal_of(args.metric)
    except KeyError as exc:
        log.error("%s", exc.args[0])
        return 2
    if args.tracking_uri.startswith("sqlite:///") and not Path(args.tracking_uri.removeprefix("sqlite:///")).is_file():
        log.error("no MLflow store at %s", args.tracking_uri)
        return 2
    use_tracking_uri(args.tracking_uri)
    import mlflow

    try:
        choice = set_champion(mlflow.MlflowClient(), args.registered_model, args.metric, goal, alias=args.alias)
    except (ModelNotFound, ValueError) as exc:
        log.error("%s", exc)
        return 2
    log.info("%s@%s is version %s (run %s): %s = %.4f", choice.name, args.alias, choice.version, choice.run_id,
             choice.metric, choice.value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
