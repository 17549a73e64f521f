"""Evaluate a trained generator on the test split and log the figures to its MLflow run; re-pick the champion.

    python jobs/evaluate.py                                      # newest version of palsygan-stargan
    python jobs/evaluate.py --model models:/palsygan-stargan/3
    python jobs/evaluate.py --model runs:/<run_id>/generator --no-champion
    python jobs/evaluate.py --model output/checkpoints/ckpt-00200000.pt     # logs into the checkpoint's run
    python jobs/evaluate.py --champion-metric eval/identity_same_person_rate
    python jobs/evaluate.py --tracking-uri http://127.0.0.1:5000 --dataset hdfs:///faces

Every test face (subjects never seen in training) is translated to every label and judged: target-
expression accuracy by a classifier trained on the real training split (cached in --classifier-cache,
logged with its own accuracy on real test faces), identity (dlib embedding distance), cycle L1,
face detection and facial asymmetry from 68 landmarks (see training/evaluation.py). Metrics go to the
model's source run as eval/... (sortable in the MLflow UI), plots and the per-target table as eval/
artifacts, and a copy to --output/<run id>/. Then the registered model's "champion" alias moves to the
version with the best --champion-metric (jobs/champion.py does only that). Exit status 0, or 2 when
the model, run or dataset is not found or the configuration is invalid.
"""
from __future__ import annotations

import argparse
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
log = logging.getLogger("palsygan.evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the evaluation job."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models:/palsygan-stargan/latest",
                   help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/generator or a checkpoint file "
                        "(default: %(default)s)")
    p.add_argument("--dataset", help="Petastorm dataset URL (default: the one the model was trained on)")
    p.add_argument("--split", default="test")
    p.add_argument("--max-faces", type=int, help="evaluate only the first N faces of the split")
    p.add_argument("--example-faces", type=int, default=6, help="rows of the example grid")
    p.add_argument("--analysis-size", type=int, default=128, help="face size for dlib landmarks and embeddings")
    p.add_argument("--classifier-epochs", type=int, default=60)
    p.add_argument("--classifier-cache", type=Path, default=OUTPUT / "classifiers")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    t = p.add_argument_group("tracking")
    t.add_argument("--tracking-uri", default=f"sqlite:///{OUTPUT / 'mlflow.db'}")
    t.add_argument("--run-id", help="log into this run instead of the model's source run")
    t.add_argument("--output", type=Path, default=OUTPUT / "evaluation", help="local copy of the report")
    c = p.add_argument_group("champion")
    c.add_argument("--registered-model", default="palsygan-stargan",
                   help="whose champion to re-pick when --model is not a models:/ URI")
    c.add_argument("--champion-metric", default="eval/target_accuracy_balanced")
    c.add_argument("--champion-goal", choices=["max", "min"], help="default: the metric's known goal")
    c.add_argument("--no-champion", action="store_true", help="do not move the champion alias")
    return p.parse_args(argv)


def build_job(args: argparse.Namespace):
    """The frozen EvaluateJob of this run; KeyError/ValueError on an invalid combination."""
    from training.evaluation import EvalConfig, EvaluateJob, goal_of
    from training.expression_classifier import ClassifierConfig

    goal = None
    if not args.no_champion:
        goal = args.champion_goal or goal_of(args.champion_metric)
    name = args.model.removeprefix("models:/").split("@")[0].split("/")[0] if args.model.startswith("models:/") \
        else args.registered_model
    dataset = args.dataset if not args.dataset or "://" in args.dataset else Path(args.dataset).resolve().as_uri()
    return EvaluateJob(
        model=args.model, dataset=dataset, tracking_uri=args.tracking_uri, run_id=args.run_id,
        output=args.output, classifier_cache=args.classifier_cache, registered_model=name or None,
        champion_metric=None if args.no_champion else args.champion_metric, champion_goal=goal,
        threads=args.threads,
        eval=EvalConfig(split=args.split, max_faces=args.max_faces, analysis_size=args.analysis_size,
                        example_faces=args.example_faces,
                        classifier=ClassifierConfig(epochs=args.classifier_epochs)),
    )


def run(job) -> dict[str, float]:
    """Evaluate, write and log the report, move the champion; returns the metrics."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from training.evaluation import evaluate_translator, log_evaluation, summarise, write_report
    from training.expression_classifier import classifier_for
    from training.registry import ModelNotFound, set_champion
    from training.splits import read_split
    from training.translate import load_translator

    if job.threads:
        import torch
        torch.set_num_threads(job.threads)
    client = mlflow.MlflowClient()
    translator = load_translator(job.model)
    run_id = job.run_id or translator.run_id
    if run_id is None:
        raise ModelNotFound(f"{job.model} names no MLflow run to log into: pass --run-id")
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        raise ModelNotFound(f"run {run_id} of {job.model}: {exc.message}") from None
    dataset = job.dataset or translator.meta.get("dataset_url")
    if not dataset:
        raise ValueError(f"{job.model} does not say which dataset it was trained on: pass --dataset")

    faces = read_split(dataset, job.eval.split, limit=job.eval.max_faces)
    classifier = classifier_for(dataset, translator.image_size, job.classifier_cache, job.eval.classifier)
    evaluation = evaluate_translator(translator, faces, classifier, job.eval)
    metrics = summarise(evaluation, classifier)
    shown = job.model if ":/" in job.model else Path(job.model).name  # a checkpoint: its file name
    title = f"{shown} (run {run_id[:8]}) on {len(faces)} {job.eval.split} faces"
    files = write_report(evaluation, metrics, job.output / run_id, title)
    log_evaluation(client, run_id, metrics, files,
                   {"eval.model_uri": job.model, "eval.dataset_url": dataset, "eval.split": job.eval.split,
                    "eval.classifier": classifier.path.name if classifier.path else ""})
    if classifier.path is not None:
        client.log_artifact(run_id, str(classifier.path), "eval/classifier")
    log.info("target accuracy %.3f (balanced %.3f; classifier on real test faces %.3f, balanced %.3f), identity "
             "distance %.3f (same person %.0f%%), cycle L1 %.3f; report in %s",
             metrics["eval/target_accuracy"], metrics["eval/target_accuracy_balanced"],
             classifier.metrics["real_accuracy"], classifier.metrics["real_accuracy_balanced"],
             metrics["eval/identity_distance"], 100 * metrics["eval/identity_same_person_rate"],
             metrics["eval/cycle_l1"], job.output / run_id)

    if job.champion_metric and job.registered_model:
        try:
            choice = set_champion(client, job.registered_model, job.champion_metric, job.champion_goal)
            log.info("champion of %s: version %s (%s = %.4f)", choice.name, choice.version, choice.metric, choice.value)
        except (ModelNotFound, ValueError) as exc:  # no versions, or none evaluated (e.g. a runs:/ model)
            log.info("no champion chosen: %s", exc)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Build the job and run it; 0 on success, 2 when something named is not found or invalid."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    args = parse_args(argv)
    from training.registry import ModelNotFound, use_tracking_uri

    try:
        job = build_job(args)
    except (KeyError, ValueError) as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    if job.tracking_uri.startswith("sqlite:///") and not Path(job.tracking_uri.removeprefix("sqlite:///")).is_file():
        log.error("no MLflow store at %s: train a model first (jobs/train.py) or pass --tracking-uri",
                  job.tracking_uri)
        return 2
    use_tracking_uri(job.tracking_uri)
    try:
        run(job)
    except ModelNotFound as exc:
        log.error("not found: %s", exc)
        return 2
    except (KeyError, ValueError, FileNotFoundError) as exc:
        log.error("evaluation stopped: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
