"""The judge: baselines as data, checked against an experiment's recorded runs.

>>> from suite.runner import load_plan
>>> from suite.check import baselines_for, check_plan, default_baseline_files, render_check
>>> plan = load_plan("experiments/ci.yaml")                     # reads the store, writes nothing
>>> files = default_baseline_files(plan.experiment.path)           # baselines/*.yaml
>>> baselines = baselines_for(plan.name, files, explicit=False)
>>> result = check_plan(plan, baselines)                         # BaselineError: a bad file
>>> print(render_check(result)); result.exit_code                # 0 pass, 1 a FAIL or missing

Modules: ``baseline`` (file format and validation), ``relation`` (the relation grammar),
``metrics`` (metric names, units, derived gains), ``stats`` (estimates and the tests made on
them), ``results`` (verdicts and results), ``judge`` (entries judged, the check), ``pairing``
(relations judged on paired contrasts), ``render`` (the table), ``write`` (``--write-baseline``:
regression thresholds from measured runs), ``compare`` (``bnsuite compare``: two sets of runs).
"""

from suite.check.baseline import (
    Baseline,
    BaselineError,
    Entry,
    RelationSpec,
    baselines_for,
    default_baseline_files,
    load_baselines,
)
from suite.check.judge import check_plan
from suite.check.relation import parse_relation
from suite.check.render import render_check
from suite.check.results import CheckResult

__all__ = [
    "Baseline",
    "BaselineError",
    "CheckResult",
    "Entry",
    "RelationSpec",
    "baselines_for",
    "check_plan",
    "default_baseline_files",
    "load_baselines",
    "parse_relation",
    "render_check",
]
