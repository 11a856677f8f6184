"""baselines/: the paper's numbers are well-formed data tied to experiment files that exist."""

from pathlib import Path

import yaml

from suite.check.baseline import load_baselines
from suite.check.judge import matches
from suite.config import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def experiments_by_name() -> dict[str, Path]:
    """The shipped experiment files, keyed by the ``name`` each one declares."""
    out = {}
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        out[yaml.safe_load(path.read_text())["name"]] = path
    return out


def test_paper_baselines_name_existing_experiments_and_valid_numbers():
    """Every experiment section of baselines/paper.yaml names a shipped experiment file; every
    entry and every relation group selects at least one of its cells; every expected percentage
    lies in (0, 100) and every judged entry has a tolerance or bounds."""
    files = experiments_by_name()
    baselines = load_baselines(ROOT / "baselines" / "paper.yaml")
    assert baselines
    for name, baseline in baselines.items():
        assert name in files, f"{name}: no experiment file declares this name"
        cells = load_experiment(files[name], env={"DATA": "/data"}).cells()
        trees = [c.to_dict() for c in cells]
        for entry in baseline.entries:
            assert any(matches(t, entry.match) for t in trees), entry.where
            if entry.judged and entry.expected is not None:
                if entry.unit == "percent":
                    assert 0 < entry.expected < 100, entry.where
                assert entry.tolerance is not None or entry.minimum is not None, entry.where
        for relation in baseline.relations:
            for group, layer in relation.groups.items():
                assert any(matches(t, layer) for t in trees), f"{relation.where}: {group}"


def test_experiments_judged_on_paper_linear_numbers_use_the_standard_augmented_probe():
    """Every experiment whose linear top-1 is compared with the paper's (baselines/paper.yaml)
    evaluates with eval.linear.protocol: augmented, the protocol of the paper's ImageNet numbers
    (MoCo's and the official code's linear evaluation), not the fast cached-feature probe. Paper
    numbers kept only as references (another or an unstated setting: stl10-table1, mini-table1,
    the paper's ImageNet table) are not judged and do not count."""
    files = experiments_by_name()
    judged = {
        name
        for name, baseline in load_baselines(ROOT / "baselines" / "paper.yaml").items()
        if any(entry.metric.startswith("linear/") and entry.judged for entry in baseline.entries)
    }
    assert judged
    for name in judged:
        cells = load_experiment(files[name], env={"DATA": "/data"}).cells()
        assert {c.eval.linear.protocol for c in cells} == {"augmented"}, name
