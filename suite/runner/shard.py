"""``--shard K/N``: a deterministic share of an experiment's cells for one of N machines.

Shards are numbered from 1: ``1/4`` … ``4/4``. Cell ``i`` (0-based, in the experiment's expanded
order, as ``bnsuite plan`` numbers them) belongs to shard ``K = (i mod N) + 1`` — round robin, so
the shards differ in size by at most one cell and neighbouring cells (often the seeds of one
configuration) spread over the machines. The assignment depends on the file only: every machine
computes the same split. Editing the matrix may move cells between shards; cells already FINISHED
are skipped wherever they land, so re-sharding never trains a finished cell twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int = 1
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, position: int) -> bool:
        """Cell number ``position`` (0-based) is in this shard: ``position mod N = K − 1``."""
        return position % self.count == self.index - 1

    def select(self, items: Sequence[T]) -> list[tuple[int, T]]:
        """``(position, item)`` for this shard's items, in order."""
        return [(i, item) for i, item in enumerate(items) if self.owns(i)]


def parse_shard(text: str) -> Shard:
    """``"K/N"`` with integers ``N >= 1`` and ``1 <= K <= N``; ValueError naming the rule."""
    match = _SHARD.match(str(text))
    if match is None:
        raise ValueError(
            f"{text!r} is not of the form K/N (shard K of N, numbered from 1, e.g. 1/2 and 2/2)"
        )
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"{text!r} has N = {count}; N must be at least 1")
    if not 1 <= index <= count:
        raise ValueError(
            f"{text!r} has K = {index}; shards are numbered from 1, so K must be in "
            f"1..{count} (e.g. 1/{count} … {count}/{count})"
        )
    return Shard(index, count)
