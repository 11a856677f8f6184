"""Experiment files: schema, validation, matrix expansion and cell ids.

>>> from suite.config import load_experiment
>>> exp = load_experiment("experiments/ci.yaml")        # ConfigError lists every problem
>>> [cell.cell_id for cell in exp.cells()]               # deterministic order, stable ids

The schema reference is ``experiments/README.md``.
"""

from suite.config.errors import ConfigError
from suite.config.loader import Experiment, load_experiment

__all__ = ["ConfigError", "Experiment", "load_experiment"]
