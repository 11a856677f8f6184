"""The metrics a baseline may name, their kind (accuracy or not), direction and units.

A cell's run logs accuracies as fractions in [0, 1] (``knn/top1``, ``linear/top1`` …), the same
probes on the random-init encoder (``…_random_init``) and speed figures (``images_per_s``,
``step_ms``, ``peak_memory_mb`` …); bench cells add the throughput study's figures
(``images_per_s_vs_local``, ``collective_fraction``, ``mfu`` …, :mod:`suite.throughput`).
A baseline may also name a *derived* metric:

- ``<accuracy>_gain``: the accuracy minus the same cell's random-init floor
  (``knn/top1_gain = knn/top1 − knn/top1_random_init``): what training added.

Units: an accuracy is compared in ``fraction`` (as logged) or ``percent`` (× 100, as the paper
prints it); any other metric in ``value`` (as logged).
"""

from __future__ import annotations

from collections.abc import Mapping

from suite.config.errors import Invalid, choose_from, suggest

_PROBES = ("knn/top1", "knn/top5", "linear/top1", "linear/top5", "linear/best_top1")
GAIN, FLOOR = "_gain", "_random_init"
ACCURACY_METRICS = tuple(p + s for p in _PROBES for s in ("", FLOOR, GAIN))
#: logged speed and training figures, and whether a larger value is better
OTHER_METRICS: dict[str, bool] = {
    "images_per_s": True,
    "step_ms": False,
    "data_wait_fraction": False,
    "peak_memory_mb": False,
    "wall_time_s": False,
    "train/loss_final": False,
    "train/steps": True,
    # bench cells (suite/throughput.py): the figures of the throughput study
    "images_per_s_vs_local": True,
    "images_per_s_vs_supervised": True,
    "local_images_per_s": True,
    "local_step_ms": False,
    "supervised_step_ms": False,
    "collective_fraction": False,
    "collective_ms": False,
    "gflops_per_image": False,
    "mfu": True,
}
METRICS = (*ACCURACY_METRICS, *OTHER_METRICS)
UNITS = {"percent": 100.0, "fraction": 1.0, "value": 1.0}


def check_metric(name: object) -> str:
    """``name`` if a baseline may use it, else :class:`Invalid` with the choices."""
    if isinstance(name, str) and name in METRICS:
        return name
    return _invalid(name, "is not a metric the suite records", METRICS)


def is_accuracy(metric: str) -> bool:
    return metric in ACCURACY_METRICS


def higher_is_better(metric: str) -> bool:
    return is_accuracy(metric) or OTHER_METRICS[metric]


def default_unit(metric: str) -> str:
    return "fraction" if is_accuracy(metric) else "value"


def check_unit(unit: object, metric: str) -> str:
    """``unit`` if it suits ``metric`` (percent/fraction for accuracies, value for the rest)."""
    valid = ("percent", "fraction") if is_accuracy(metric) else ("value",)
    if isinstance(unit, str) and unit in valid:
        return unit
    return _invalid(unit, f"is not a unit of {metric}", valid)


def _invalid(value: object, what: str, choices: tuple[str, ...]) -> str:
    raise Invalid(f"{value!r} {what}; {choose_from(choices)}{suggest(value, choices)}")


def cell_value(metrics: Mapping[str, float], metric: str) -> float | None:
    """``metric`` of one cell's logged ``metrics`` (derived ones computed), or None if absent."""
    if metric.endswith(GAIN):
        base = metric[: -len(GAIN)]
        value, floor = metrics.get(base), metrics.get(base + FLOOR)
        return None if value is None or floor is None else float(value) - float(floor)
    value = metrics.get(metric)
    return None if value is None else float(value)
