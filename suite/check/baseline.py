"""Baseline files (``baselines/*.yaml``): expected numbers as data, validated like experiments.

A file holds expectations for one or more experiments, by the experiment file's ``name``::

    description: free text
    experiments:
      stl10-table1:                     # an experiment's name
        unit: percent                   # default of every entry and relation below
        metric: linear/top1             # default metric (optional)
        source: "paper, Table 1"        # default provenance (optional); also ``protocol``, ``note``
        entries:
          - match: {student_bn: sync, teacher_bn: sync}   # cell keys as in experiments/README.md
            metric: linear/top1
            expected: 88.06
            tolerance: 1.0              # |mean − expected| ≤ tolerance (side: both)
            reference: 88.1             # shown beside the measurement (e.g. a paper's number
                                        # in another setting), never judged
            side: both                  # or lower (mean ≥ expected − tol), upper (≤ expected + tol)
            min: 80                     # and/or absolute bounds on the mean
            source: ...; protocol: ...; note: ...
        relations:
          - "local/local < sync/sync"   # a bare string: the section's metric and unit
          - relation: "local/momentum >= 0.97 * local/local"
            metric: images_per_s
            match: {method: byol}       # narrows every group of the relation
            groups: {small: {batch_size: 32}}   # named groups, for relations over other keys

``match`` selects every cell of the experiment whose resolved values agree with it (dotted keys
such as ``dataset.name`` are allowed; ``method: m2t`` matches by the resolved method), and a
metric is averaged over the seeds of the cells it selects. ``expected: null`` keeps a claim
whose number is not known: it is reported, never judged. Every problem is reported at once as
``FILE: experiments.NAME.entries[i].key: problem`` (:class:`BaselineError`, exit 2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.check import metrics as m
from suite.check.relation import Relation, RelationSyntaxError, parse_relation
from suite.config.errors import ConfigError, Invalid, show, suggest
from suite.config.loader import parse_yaml
from suite.config.schema import CELL, INVALID, Layer, read_layer

TOP_KEYS = ("description", "experiments")
#: the section's defaults for its entries (and relations: unit, metric, source, alpha)
NOISE_KEYS = ("sd", "sd_df", "sd_source", "ref_sd", "ref_n", "ref_sd_source")
SECTION_KEYS = (
    "unit",
    "metric",
    "source",
    "protocol",
    "note",
    "alpha",
    "pool_sd",
    "false_alarm",
    *NOISE_KEYS,
    "entries",
    "relations",
)
ENTRY_KEYS = (
    "name",
    "match",
    "metric",
    "unit",
    "expected",
    "tolerance",
    "side",
    "min",
    "max",
    "source",
    "protocol",
    "note",
    "measured",
    "reference",
    "kind",
    "source_metric",
    *NOISE_KEYS,
)
RELATION_KEYS = (
    "name",
    "relation",
    "metric",
    "unit",
    "match",
    "groups",
    "margin",
    "source",
    "note",
)
SIDES = ("both", "lower", "upper")
#: what an entry claims, and so how it is judged (suite.check.judge)
KINDS = ("equivalence", "bound", "regression", "reference")
DEFAULT_ALPHA = 0.05
DEFAULT_FALSE_ALARM = 0.02


class BaselineError(ConfigError):
    """A baseline file that cannot be used; ``errors`` holds every problem, one line each."""


@dataclass(frozen=True)
class NoiseSpec:
    """What a baseline states about noise (in the entry's unit).

    ``sd``: the measurement's per-seed sd, when it is not estimated from the seeds (one seed, or
    an sd known from elsewhere), with its degrees of freedom ``sd_df`` (None: taken as known)
    and ``sd_source``. ``ref_sd``: the sd of the compared number's own runs — a paper number is
    one run with its own seed noise; ``"measured"`` (the default for ``expected ± tolerance``)
    assumes the measured per-seed sd; ``ref_n`` runs (1: a single run). Whether the
    measurement's sd is pooled is the section's ``pool_sd`` (:attr:`Baseline.pool_sd`).
    """

    sd: float | None = None
    sd_df: float | None = None
    sd_source: str = ""
    ref_sd: float | str | None = None
    ref_n: float = 1.0
    ref_sd_source: str = ""


@dataclass(frozen=True)
class Entry:
    """One expectation: a metric of the cells ``match`` selects, against a number or bounds."""

    where: str  # "FILE: experiments.NAME.entries[i]"
    label: str
    match: Layer
    match_text: str
    metric: str
    unit: str
    expected: float | None = None
    tolerance: float | None = None
    side: str = "both"
    minimum: float | None = None
    maximum: float | None = None
    source: str = ""
    protocol: str = ""
    note: str = ""
    measured: dict[str, Any] = field(default_factory=dict)
    reference: float | None = None  # a number shown beside the measurement, never judged
    kind: str = "equivalence"
    noise: NoiseSpec = field(default_factory=lambda: NoiseSpec())
    source_metric: str = ""  # the metric the source's number is (e.g. best-of-evaluations)
    alpha: float = DEFAULT_ALPHA

    @property
    def judged(self) -> bool:
        """False for a reference: shown beside the measurement, never judged."""
        return self.kind != "reference"

    @property
    def compared_to(self) -> float | None:
        """The number the measurement is compared with: ``expected``, or a reference's
        ``reference`` number."""
        if self.kind == "reference" and self.reference is not None:
            return self.reference
        return self.expected

    @property
    def protocol_differs(self) -> bool:
        """The source's number is another metric than the one measured (not like with like)."""
        return bool(self.source_metric) and self.source_metric != self.metric

    def bounds(self) -> tuple[float | None, float | None]:
        """The interval the mean must lie in (either end may be open)."""
        lo, hi = self.minimum, self.maximum
        if self.expected is not None and self.tolerance is not None:
            if self.side in ("both", "lower"):
                low = self.expected - self.tolerance
                lo = low if lo is None else max(lo, low)
            if self.side in ("both", "upper"):
                high = self.expected + self.tolerance
                hi = high if hi is None else min(hi, high)
        return lo, hi


@dataclass(frozen=True)
class RelationSpec:
    """A relation between groups of cells, each group a ``match`` layer."""

    where: str
    label: str
    relation: Relation
    metric: str
    unit: str
    groups: dict[str, Layer]  # group name as written in the relation -> its match
    group_text: dict[str, str]
    source: str = ""
    note: str = ""
    margin: float | None = None  # for ``~=``: the equivalence margin
    alpha: float = DEFAULT_ALPHA
    noise: NoiseSpec = field(default_factory=lambda: NoiseSpec())  # ``sd`` for one-seed groups


@dataclass(frozen=True)
class Baseline:
    """The expectations one file holds for one experiment."""

    file: Path
    experiment: str
    entries: tuple[Entry, ...]
    relations: tuple[RelationSpec, ...]
    false_alarm: float = DEFAULT_FALSE_ALARM  # family-wise, over the regression entries
    pool_sd: bool = False  # arms of one design: pooled sd for entries, block residual for pairs


# -- reading ---------------------------------------------------------------------------------
def load_baselines(path: str | os.PathLike[str]) -> dict[str, Baseline]:
    """Every experiment section of a baseline file, by experiment name (BaselineError if bad)."""
    file = str(path)
    try:
        raw = parse_yaml(file, TOP_KEYS)
    except ConfigError as exc:
        raise BaselineError(exc.errors) from None
    errors: list[str] = []
    for key in raw:
        if key not in TOP_KEYS:
            errors.append(_unknown("", key, TOP_KEYS))
    sections = raw.get("experiments")
    out: dict[str, Baseline] = {}
    if not isinstance(sections, Mapping) or not sections:
        errors.append(
            f"experiments: {show(sections)} is not a mapping of experiment name -> expectations; "
            "write experiments: {NAME: {entries: [...], relations: [...]}}"
        )
    else:
        for name, section in sections.items():
            out[str(name)] = _section(file, str(name), section, errors)
    if errors:
        raise BaselineError([f"{file}: {e}" for e in errors])
    return out


def _unknown(path: str, key: object, valid: tuple[str, ...]) -> str:
    where = f"{path}.{key}" if path else str(key)
    return f"{where}: unknown key; valid keys: {', '.join(valid)}{suggest(key, valid)}"


def _text(value: Any, path: str, errors: list[str]) -> str:
    if value is None:
        return ""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    errors.append(f"{path}: {show(value)} is not text")
    return ""


def _number(value: Any, path: str, errors: list[str], *, minimum: float | None = None) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.append(f"{path}: {show(value)} is not a number")
        return None
    if not math.isfinite(value):
        errors.append(f"{path}: {show(value)} is not a finite number")
        return None
    if minimum is not None and value < minimum:
        errors.append(f"{path}: {value!r} is below {minimum:g}")
        return None
    return float(value)


def _section(file: str, name: str, raw: Any, errors: list[str]) -> Baseline:
    path = f"experiments.{name}"
    if not isinstance(raw, Mapping):
        errors.append(
            f"{path}: {show(raw)} is not a mapping; valid keys: {', '.join(SECTION_KEYS)}"
        )
        return Baseline(Path(file), name, (), ())
    for key in raw:
        if key not in SECTION_KEYS:
            errors.append(_unknown(path, key, SECTION_KEYS))
    defaults = {k: raw.get(k) for k in ("unit", "metric", "source", "protocol", "note")}
    if defaults["metric"] is not None:
        defaults["metric"] = _checked(m.check_metric, defaults["metric"], f"{path}.metric", errors)
    defaults["alpha"] = _probability(raw.get("alpha"), f"{path}.alpha", errors) or DEFAULT_ALPHA
    false_alarm = (
        _probability(raw.get("false_alarm"), f"{path}.false_alarm", errors) or DEFAULT_FALSE_ALARM
    )
    pool = raw.get("pool_sd", False)
    if not isinstance(pool, bool):
        errors.append(f"{path}.pool_sd: {show(pool)} is not true or false")
        pool = False
    defaults.update({k: raw[k] for k in NOISE_KEYS if k in raw})
    entries, relations = raw.get("entries") or [], raw.get("relations") or []
    if not isinstance(entries, list):
        errors.append(f"{path}.entries: {show(entries)} is not a list of entries")
        entries = []
    if not isinstance(relations, list):
        errors.append(f"{path}.relations: {show(relations)} is not a list of relations")
        relations = []
    if not entries and not relations:
        errors.append(f"{path}: no entries and no relations; give at least one")
    return Baseline(
        Path(file),
        name,
        tuple(
            e
            for i, item in enumerate(entries)
            if (e := _entry(file, f"{path}.entries[{i}]", item, defaults, errors)) is not None
        ),
        tuple(
            r
            for i, item in enumerate(relations)
            if (r := _relation(file, f"{path}.relations[{i}]", item, defaults, errors)) is not None
        ),
        false_alarm,
        pool,
    )


def _probability(value: Any, path: str, errors: list[str]) -> float | None:
    """A level such as ``alpha`` or ``false_alarm``: a number in (0, 0.5]; None when absent."""
    number = _number(value, path, errors)
    if number is not None and not 0 < number <= 0.5:
        errors.append(f"{path}: {number:g} is not a level in (0, 0.5] (e.g. 0.05)")
        return None
    return number


def _noise(raw: Mapping[str, Any], path: str, defaults: Mapping[str, Any], errors: list[str]):
    """The entry's :class:`NoiseSpec`: its own keys, else the section's."""

    def get(key: str) -> tuple[Any, str]:
        where = f"{path}.{key}" if key in raw else f"{path} (the section's {key})"
        return raw.get(key, defaults.get(key)), where

    sd, where = get("sd")
    sd = _number(sd, where, errors, minimum=0)
    sd_df, where = get("sd_df")
    sd_df = _number(sd_df, where, errors, minimum=1)
    ref_sd, where = get("ref_sd")
    if ref_sd != "measured":
        if isinstance(ref_sd, str):
            errors.append(f"{where}: {show(ref_sd)} is not a number or 'measured'")
            ref_sd = None
        else:
            ref_sd = _number(ref_sd, where, errors, minimum=0)
    ref_n, where = get("ref_n")
    ref_n = _number(ref_n, where, errors, minimum=1)
    sources = {k: _text(get(k)[0], get(k)[1], errors) for k in ("sd_source", "ref_sd_source")}
    return NoiseSpec(
        sd=sd,
        sd_df=sd_df,
        sd_source=sources["sd_source"],
        ref_sd=ref_sd,
        ref_n=ref_n or 1.0,
        ref_sd_source=sources["ref_sd_source"],
    )


def _kind(raw: Mapping[str, Any], values: Mapping[str, Any], path: str, errors: list[str]) -> str:
    """The entry's kind as written, else what its numbers say: no number -> reference;
    ``expected ± tolerance`` on both sides -> equivalence; a side or min/max -> bound.
    ``regression`` (a threshold for one new run, from measured seeds) is only ever written."""
    expected, tolerance, lo, hi, side = (
        values[k] for k in ("expected", "tolerance", "min", "max", "side")
    )
    kind = raw.get("kind")
    if kind is None:
        if expected is None and lo is None and hi is None:
            return "reference"
        if side == "both" and lo is None and hi is None:
            return "equivalence"
        return "bound"
    if kind not in KINDS:
        errors.append(
            f"{path}.kind: {show(kind)} is invalid; choose from {', '.join(KINDS)}"
            + suggest(kind, KINDS)
        )
        return "reference"
    if kind == "equivalence" and (expected is None or tolerance is None or side != "both"):
        errors.append(f"{path}: kind equivalence needs expected and tolerance with side both")
    if kind == "bound" and lo is None and hi is None and (expected is None or side == "both"):
        errors.append(f"{path}: kind bound needs min / max, or expected and tolerance with a side")
    if kind == "regression":
        measured = raw.get("measured") or {}
        n, mean, std = (measured.get(k) for k in ("n", "mean", "std"))
        numbers = [
            _number(v, f"{path}.measured.{k}", errors)
            for k, v in (("n", n), ("mean", mean), ("std", std))
        ]
        if any(v is None for v in numbers) or numbers[0] < 2 or numbers[2] < 0:
            errors.append(
                f"{path}.measured: kind regression needs n >= 2, mean and std >= 0 of the "
                "baseline's runs (write it with --write-baseline)"
            )
        if side not in ("lower", "upper"):
            errors.append(f"{path}.side: kind regression needs side lower or upper")
    return kind


def _checked(check, value: Any, path: str, errors: list[str]) -> Any:
    try:
        return check(value)
    except Invalid as exc:
        errors.append(f"{path}: {exc}")
        return None


def expand_dotted(match: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested mappings: ``{"dataset.name": "digits"}`` -> ``{"dataset": {"name":
    "digits"}}``."""
    out: dict[str, Any] = {}
    for key, value in match.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # ``method: m2t`` beside ``method.name``
                child = node[part] = {"name": child} if part == "method" else {}
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return out


def read_match(raw: Any, path: str, errors: list[str]) -> tuple[Layer, str]:
    """A ``match`` mapping read with the experiment schema: (layer, text as written)."""
    if raw is None:
        return {}, "all cells"
    if not isinstance(raw, Mapping):
        errors.append(f"{path}: {show(raw)} is not a mapping of cell keys to values")
        return {}, ""
    before = len(errors)
    layer = read_layer(CELL, expand_dotted(raw), path, errors)
    if len(errors) > before or any(v is INVALID for v in layer.values()):
        return {}, ""
    return layer, ", ".join(f"{k}={show(v, str)}" for k, v in raw.items())


def _metric_and_unit(
    raw: Mapping[str, Any], path: str, defaults: Mapping[str, Any], errors: list[str]
) -> tuple[str | None, str | None]:
    if "metric" in raw:
        metric = _checked(m.check_metric, raw["metric"], f"{path}.metric", errors)
    else:
        metric = defaults.get("metric")
        if metric is None:
            errors.append(f"{path}: no metric; give metric (e.g. linear/top1, knn/top1_gain)")
    if metric is None:
        return None, None
    unit_raw = raw.get("unit", defaults.get("unit"))
    where = f"{path}.unit" if "unit" in raw else f"{path} (the section's unit)"
    if unit_raw is None:
        return metric, m.default_unit(metric)
    return metric, _checked(lambda u: m.check_unit(u, metric), unit_raw, where, errors)


def _entry(
    file: str, path: str, raw: Any, defaults: Mapping[str, Any], errors: list[str]
) -> Entry | None:
    if not isinstance(raw, Mapping):
        errors.append(f"{path}: {show(raw)} is not a mapping; valid keys: {', '.join(ENTRY_KEYS)}")
        return None
    before = len(errors)
    for key in raw:
        if key not in ENTRY_KEYS:
            errors.append(_unknown(path, key, ENTRY_KEYS))
    metric, unit = _metric_and_unit(raw, path, defaults, errors)
    match, match_text = read_match(raw.get("match"), f"{path}.match", errors)
    expected = _number(raw.get("expected"), f"{path}.expected", errors)
    tolerance = _number(raw.get("tolerance"), f"{path}.tolerance", errors, minimum=0)
    minimum = _number(raw.get("min"), f"{path}.min", errors)
    maximum = _number(raw.get("max"), f"{path}.max", errors)
    reference = _number(raw.get("reference"), f"{path}.reference", errors)
    side = raw.get("side", "both")
    if side not in SIDES:
        errors.append(f"{path}.side: {show(side)} is invalid; choose from {', '.join(SIDES)}")
    given = {k: raw.get(k) is not None for k in ("expected", "tolerance", "min", "max")}
    if not (
        "expected" in raw or given["min"] or given["max"] or "reference" in raw or "kind" in raw
    ):
        errors.append(
            f"{path}: nothing to check; give expected and tolerance, or min / max, or a "
            "reference (a number shown beside the measurement, not judged)"
        )
    if given["expected"] and not given["tolerance"] and raw.get("kind") != "regression":
        errors.append(
            f"{path}.tolerance: missing; expected {show(raw['expected'])} needs a tolerance"
        )
    if given["tolerance"] and "expected" in raw and not given["expected"]:
        errors.append(f"{path}.tolerance: given, but expected is null")
    if minimum is not None and maximum is not None and minimum > maximum:
        errors.append(f"{path}: min {minimum:g} > max {maximum:g}")
    measured = raw.get("measured") or {}
    if not isinstance(measured, Mapping):
        errors.append(f"{path}.measured: {show(measured)} is not a mapping")
        measured = {}
    values = {"expected": expected, "tolerance": tolerance, "min": minimum, "max": maximum}
    kind = _kind(raw, {**values, "side": side}, path, errors)
    noise = _noise(raw, path, defaults, errors)
    source_metric = ""
    if raw.get("source_metric") is not None:
        source_metric = (
            _checked(m.check_metric, raw["source_metric"], f"{path}.source_metric", errors) or ""
        )
    if len(errors) > before:
        return None
    return Entry(
        where=f"{file}: {path}",
        label=_text(raw.get("name"), f"{path}.name", errors) or match_text,
        match=match,
        match_text=match_text,
        metric=metric or "",
        unit=unit or "",
        expected=expected,
        tolerance=tolerance,
        side=side,
        minimum=minimum,
        maximum=maximum,
        source=_text(raw.get("source", defaults.get("source")), f"{path}.source", errors),
        protocol=_text(raw.get("protocol", defaults.get("protocol")), f"{path}.protocol", errors),
        note=_text(raw.get("note"), f"{path}.note", errors),
        measured=dict(measured),
        reference=reference,
        kind=kind,
        noise=noise,
        source_metric=source_metric,
        alpha=defaults.get("alpha") or DEFAULT_ALPHA,
    )


def _relation(
    file: str, path: str, raw: Any, defaults: Mapping[str, Any], errors: list[str]
) -> RelationSpec | None:
    if isinstance(raw, str):
        raw = {"relation": raw}
    if not isinstance(raw, Mapping):
        errors.append(
            f"{path}: {show(raw)} is not a relation; write a string such as "
            "'local/local < sync/sync' or a mapping with keys " + ", ".join(RELATION_KEYS)
        )
        return None
    before = len(errors)
    for key in raw:
        if key not in RELATION_KEYS:
            errors.append(_unknown(path, key, RELATION_KEYS))
    try:
        relation = parse_relation(raw.get("relation"))
    except RelationSyntaxError as exc:
        errors.append(f"{path}.relation: {exc}")
        return None
    metric, unit = _metric_and_unit(raw, path, defaults, errors)
    margin = _number(raw.get("margin"), f"{path}.margin", errors, minimum=0)
    if relation.op == "~=" and margin is None and "margin" not in raw:
        errors.append(
            f"{path}.margin: missing; {relation.text!r} (~=) needs the margin within "
            "which the two sides count as equal"
        )
    if relation.op != "~=" and "margin" in raw:
        errors.append(f"{path}.margin: only a ~= relation has a margin (this one is {relation.op})")
    common, common_text = read_match(raw.get("match"), f"{path}.match", errors)
    named = raw.get("groups") or {}
    if not isinstance(named, Mapping):
        errors.append(f"{path}.groups: {show(named)} is not a mapping of name -> match")
        named = {}
    groups: dict[str, Layer] = {}
    texts: dict[str, str] = {}
    for group in relation.groups():
        if group.pair is not None:
            layer: Layer = {("student_bn",): group.pair[0], ("teacher_bn",): group.pair[1]}
            text = f"student_bn={group.pair[0]}, teacher_bn={group.pair[1]}"
        elif group.name in named:
            layer, text = read_match(named[group.name], f"{path}.groups.{group.name}", errors)
        else:
            errors.append(
                f"{path}.relation: group {group.name!r} is neither a student/teacher pair nor a "
                f"key of groups (defined: {', '.join(map(str, named)) or 'none'})"
                + suggest(group.name, [str(k) for k in named])
            )
            continue
        groups[group.name] = {**layer, **common}
        texts[group.name] = ", ".join(t for t in (text, common_text) if t)
    for name in named:
        if name not in groups and name not in {g.name for g in relation.groups()}:
            errors.append(f"{path}.groups.{name}: defined but not used in the relation")
    if len(errors) > before:
        return None
    return RelationSpec(
        where=f"{file}: {path}",
        label=_text(raw.get("name"), f"{path}.name", errors) or relation.text,
        relation=relation,
        metric=metric or "",
        unit=unit or "",
        groups=groups,
        group_text=texts,
        source=_text(raw.get("source", defaults.get("source")), f"{path}.source", errors),
        note=_text(raw.get("note"), f"{path}.note", errors),
        margin=margin,
        alpha=defaults.get("alpha") or DEFAULT_ALPHA,
        noise=_noise({}, path, defaults, errors),
    )


def default_baseline_files(experiment_path: str | os.PathLike[str]) -> list[Path]:
    """``baselines/*.yaml`` beside the experiment's folder (``experiments/x.yaml`` ->
    ``baselines/``), else ``./baselines``; sorted by name."""
    here = Path(experiment_path).resolve().parent.parent / "baselines"
    folder = here if here.is_dir() else Path("baselines").resolve()
    if not folder.is_dir():
        return []
    cwd = Path.cwd().resolve()
    return [
        f.relative_to(cwd) if f.is_relative_to(cwd) else f for f in sorted(folder.glob("*.yaml"))
    ]


def baselines_for(experiment: str, files: list[Path], *, explicit: bool) -> list[Baseline]:
    """The sections of ``files`` for ``experiment``; every file is validated in full.

    ``explicit`` (files named with ``--baseline``): a file without a section for the experiment
    is an error; otherwise it is skipped. No section anywhere is an error too.
    """
    errors: list[str] = []
    found: list[Baseline] = []
    for file in files:
        try:
            sections = load_baselines(file)
        except BaselineError as exc:
            errors.extend(exc.errors)
            continue
        if experiment in sections:
            found.append(sections[experiment])
        elif explicit:
            names = ", ".join(sections) or "none"
            errors.append(
                f"{file}: no expectations for experiment {experiment!r} (it has: {names})"
                + suggest(experiment, list(sections))
            )
    if not errors and not found:
        where = ", ".join(str(f) for f in files) or "baselines/ (no files)"
        errors.append(
            f"no baseline holds expectations for experiment {experiment!r} (looked in {where}); "
            "give --baseline FILE, or write one with --write-baseline FILE"
        )
    if errors:
        raise BaselineError(errors)
    return found
