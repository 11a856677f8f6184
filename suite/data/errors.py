"""The data layer's one exception type."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset is unknown, missing, incomplete or malformed.

    The message names the dataset, the place looked at, what was expected there and how to obtain
    it, so that ``bnsuite`` can report it (exit code 2) before any model is built.
    """
