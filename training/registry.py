"""The MLflow model registry side of evaluation: which run a model came from, and the "champion" alias.

MLflow resolves models:/ URIs against the process-wide tracking and registry URIs (in MLflow 3.17
`download_artifacts` ignores an explicit tracking_uri for models:/), so entry points call
`use_tracking_uri` once before loading or evaluating anything.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from training.tracking import disable_telemetry

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
GOALS = ("max", "min")


class ModelNotFound(LookupError):
    """A model URI, registered model, version, alias, run or file that does not exist."""


@dataclass(frozen=True)
class ChampionChoice:
    """The version given the champion alias, its metric value, and every version's value considered."""

    name: str
    version: str
    run_id: str
    metric: str
    value: float
    candidates: dict  # version -> metric value (versions without the metric are left out)


def use_tracking_uri(tracking_uri: str) -> None:
    """Point this process's MLflow tracking and registry at `tracking_uri` (telemetry off)."""
    disable_telemetry()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def _quoted(name: str) -> str:
    """A registered model name as a search-filter string literal."""
    return "'" + name.replace("'", "\\'") + "'"


def model_versions(client, name: str) -> list:
    """Every version of a registered model, oldest first; ModelNotFound if it has none."""
    versions = client.search_model_versions(f"name = {_quoted(name)}")
    if not versions:
        raise ModelNotFound(f"no registered model {name!r} (or it has no versions) in {client.tracking_uri}")
    return sorted(versions, key=lambda v: int(v.version))


def source_run_id(model_uri: str, client) -> str | None:
    """The run that logged a runs:/ or models:/ model (NAME/VERSION, NAME/latest, NAME@ALIAS, m-ID); None for paths."""
    from mlflow.exceptions import MlflowException

    try:
        if model_uri.startswith("runs:/"):
            return model_uri.removeprefix("runs:/").split("/")[0]
        if not model_uri.startswith("models:/"):
            return None
        rest = model_uri.removeprefix("models:/").rstrip("/")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        if "/" in rest:
            name, ref = rest.rsplit("/", 1)
            if ref == "latest":
                return model_versions(client, name)[-1].run_id
            if ref.isdigit():
                return client.get_model_version(name, ref).run_id
            raise ModelNotFound(f"{model_uri}: expected a version number, 'latest' or @alias after the name")
        return client.get_logged_model(rest).source_run_id
    except MlflowException as exc:
        raise ModelNotFound(f"{model_uri}: {exc.message}") from None


def set_champion(client, name: str, metric: str, goal: str, alias: str = CHAMPION_ALIAS) -> ChampionChoice:
    """Give `alias` to the version of `name` whose source run has the best `metric` (goal max or min)."""
    from mlflow.exceptions import MlflowException

    if goal not in GOALS:
        raise KeyError(f"unknown goal {goal!r}; known: {list(GOALS)}")
    candidates: dict[str, tuple[float, str]] = {}
    for version in model_versions(client, name):
        value = client.get_run(version.run_id).data.metrics.get(metric) if version.run_id else None
        if value is None or not math.isfinite(value):
            logger.info("version %s of %s has no %s; not a candidate", version.version, name, metric)
            continue
        candidates[str(version.version)] = (float(value), version.run_id)
    if not candidates:
        raise ValueError(f"no version of {name!r} has the metric {metric!r}: evaluate a version first "
                         f"(jobs/evaluate.py)")
    # Best value wins; among equals, the newest version.
    sign = 1.0 if goal == "max" else -1.0
    best = max(candidates, key=lambda v: (sign * candidates[v][0], int(v)))
    previous = None
    try:
        previous = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:  # the alias does not exist yet
        logger.debug("no %s alias on %s yet: %s", alias, name, exc)
    client.set_registered_model_alias(name, alias, best)
    value, run_id = candidates[best]
    logger.info("%s@%s -> version %s (%s %s = %.4g; was %s); candidates %s", name, alias, best, goal, metric,
                value, previous or "unset", {v: round(c[0], 4) for v, c in candidates.items()})
    return ChampionChoice(name=name, version=best, run_id=run_id, metric=metric, value=value,
                          candidates={v: c[0] for v, c in candidates.items()})
