"""Relations judged: the contrast ``left − right`` of a relation's groups, paired per seed where
the groups share their seeds, tested one-sided (``<``, ``>``) or within a margin (``~=``), and
Holm-adjusted over an experiment's relations (see :mod:`suite.check.judge`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from suite.check import stats as st
from suite.check.baseline import RelationSpec
from suite.check.results import (
    CONTRADICTED,
    HOLDS,
    INCONCLUSIVE,
    MISSING,
    RelationResult,
    Selection,
    Test,
    interval,
    unjudgeable,
    why,
)


def pairs(spec: RelationSpec, selections: Mapping[str, Selection]) -> tuple[list, str] | None:
    """The per-unit values of every group, paired: by seed when each group has one value per
    seed and the groups share their seeds; else by the cells' other varying values (the fields
    no group constrains). ``([{group: value}, …], words)``, or None when the groups do not pair.
    """
    constrained = {".".join(t) for layer in spec.groups.values() for t in layer}
    constrained |= {"student_bn", "teacher_bn", "method.name"}

    def keyed(sel: Selection, key) -> dict[Any, float] | None:
        out: dict[Any, float] = {}
        for cid, v in sel.values.items():
            k = key(sel, cid)
            if k in out:
                return None
            out[k] = v
        return out

    def by_seed(sel: Selection, cid: str):
        return sel.seeds[cid]

    def by_cell(sel: Selection, cid: str):
        flat = sel.flats[cid]
        return tuple(sorted((f, repr(v)) for f, v in flat.items() if f not in constrained))

    for key, words in ((by_seed, "seed"), (by_cell, "cell")):
        per_group = {name: keyed(sel, key) for name, sel in selections.items()}
        if any(v is None for v in per_group.values()):
            continue
        common = set.intersection(*(set(v) for v in per_group.values()))
        if len(common) < 2 or any(len(v) != len(common) for v in per_group.values()):
            continue
        units = [{name: per_group[name][k] for name in per_group} for k in sorted(common, key=str)]
        return units, f"paired by {words} ({len(units)} pairs)"
    return None


def relation_test(
    spec: RelationSpec,
    selections: Mapping[str, Selection],
    design: tuple[float, float, int] | None = None,
) -> tuple[Test | None, str]:
    """The test of the relation's contrast ``left − right``, and how it was paired. ``design``:
    ``(sd, df, arms)`` of the section's block residuals (``pool_sd``), used for a contrast
    paired by seed in place of its own few differences' sd."""
    rel = spec.relation
    means = {name: sel.stat.mean for name, sel in selections.items()}
    paired = pairs(spec, selections)
    if paired is not None:
        units, words = paired
        values = [rel.contrast(u) for u in units]
        value, k = statistics.fmean(values), len(values)
        if design is not None and words.startswith("paired by seed"):
            sd, df, arms = design
            weight = math.sqrt(sum(c * c for c in rel.gradient(means).values()))
            terms = (st.Term(weight, sd, k, df, arms=arms - 1),)
            text = f"block residual sd {sd:.4g} of {arms} arms x {k} seeds (df {df:g})"
        else:
            sd = statistics.stdev(values)
            terms = (st.Term(1.0, sd, k, k - 1.0),)
            text = f"sd {sd:.4g} of {k} per-pair differences"
        noise = st.Noise(terms, text)
    else:
        words = "unpaired (Welch)"
        grads = rel.gradient(means)
        parts = []
        for name, sel in selections.items():
            c, stat = grads[name], sel.stat
            if c == 0:
                continue
            stated = spec.noise.sd
            if stated is not None:  # a per-seed sd known from elsewhere (one-seed groups)
                df = math.inf if spec.noise.sd_df is None else spec.noise.sd_df
                parts.append(st.Term(c, stated, stat.n, df))
                continue
            if stat.n < 2:
                return None, f"{words}: group {name!r} has {stat.n} value, no spread"
            parts.append(st.Term(c, stat.std, stat.n, stat.n - 1.0))
        noise = st.Noise(
            tuple(parts),
            "Welch over the groups' seeds"
            if spec.noise.sd is None
            else f"sd {spec.noise.sd:.4g} stated ({spec.noise.sd_source or 'no source'})",
        )
        if spec.noise.sd is not None:
            words = "unpaired (stated sd)"
        value = rel.contrast(means)
    if rel.direction == "~":
        lo, hi = -(spec.margin or 0.0), spec.margin or 0.0
    elif rel.direction == "<":
        lo, hi = None, 0.0
    else:
        lo, hi = 0.0, None
    test = interval(noise, value, lo, hi, spec.alpha)
    return test, words


def block_design(
    selections: Sequence[Selection],
) -> tuple[float, float, int] | None:
    """``(sd, df, arms)``: the block residual sd (:func:`~suite.check.stats.block_residual_sd`)
    of the distinct arms among ``selections`` that hold one value per seed."""
    arms: dict[frozenset[str], dict[int, float]] = {}
    for sel in selections:
        by_seed: dict[int, float] = {}
        for cid, v in sel.values.items():
            if sel.seeds[cid] in by_seed:
                break
            by_seed[sel.seeds[cid]] = v
        else:
            if by_seed:
                arms[frozenset(sel.cells)] = by_seed
    found = st.block_residual_sd(list(arms.values()))
    return None if found is None else (*found, len(arms))


def judge_relations(
    specs: Sequence[RelationSpec],
    selections: Sequence[dict[str, Selection]],
    allow_missing: bool,
    designs: Sequence[tuple[float, float, int] | None] | None = None,
) -> list[RelationResult]:
    """Every relation's verdict, Holm-adjusted over the relations that could be tested."""
    prelim: list[RelationResult] = []
    designs = designs or [None] * len(specs)
    for spec, sels, design in zip(specs, selections, designs, strict=True):
        if any(unjudgeable(sel, allow_missing) for sel in sels.values()):
            prelim.append(RelationResult(spec, sels, MISSING))
            continue
        lhs, rhs = spec.relation.sides({n: s.stat.mean for n, s in sels.items()})
        test, pairing = relation_test(spec, sels, design)
        reason = ""
        if test is None:  # no test could be made: the pairing text says why
            pairing, reason = "", pairing
        prelim.append(
            RelationResult(spec, sels, INCONCLUSIVE, lhs, rhs, test, pairing, reason=reason)
        )
    tested = [i for i, r in enumerate(prelim) if r.test is not None]
    adj = st.holm([prelim[i].test.p for i in tested])
    adj_other = st.holm([prelim[i].test.p_other for i in tested])
    out = list(prelim)
    for i, pa, po in zip(tested, adj, adj_other, strict=True):
        r = prelim[i]
        if pa < r.spec.alpha:
            verdict = HOLDS
        elif po < r.spec.alpha:
            verdict = CONTRADICTED
        else:
            verdict = INCONCLUSIVE
        reason = ""
        if verdict == INCONCLUSIVE:
            reason = why(verdict, r.test)
            if r.test.p < r.spec.alpha:
                reason = (
                    f"p {r.test.p:.2g} alone, {pa:.2g} after Holm's adjustment over "
                    f"{len(tested)} relations"
                )
        out[i] = replace(r, verdict=verdict, p_adjusted=pa, p_other_adjusted=po, reason=reason)
    return out
