"""One recipe per method (suite.recipes): the docs table, ``bnsuite run`` (config expansion),
``bnsuite bench`` and the built methods all give the same defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from suite.bench import bench_cell
from suite.config import load_experiment
from suite.methods import METHODS, build_method
from suite.recipes import RECIPES
from suite.views import aug_kind

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    "student_bn",
    "teacher_bn",
    "views",
    "eval.encoder",
    "proj_hidden",
    "proj_dim",
    "pred_hidden",
    "base_momentum",
    "momentum_schedule",
)


def docs_table() -> dict[str, dict[str, str]]:
    """experiments/README.md's "Method recipes" table: method -> column -> cell text."""
    text = (ROOT / "experiments" / "README.md").read_text()
    section = text.split("## Method recipes", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    out = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0].strip("`")] = dict(zip(COLUMNS, cells[1:], strict=True))
    return out


def test_docs_recipe_table_is_the_recipes():
    """Every method has one row, and every column shows the recipe's value ("width": the
    projector hidden width is the backbone's, "—": no predictor)."""
    table = docs_table()
    assert set(table) == set(RECIPES) == set(METHODS)
    for name, r in RECIPES.items():
        want = {
            "student_bn": r.student_bn,
            "teacher_bn": r.teacher_bn,
            "views": r.views,
            "eval.encoder": r.eval_encoder,
            "proj_hidden": "width" if r.proj_hidden is None else str(r.proj_hidden),
            "proj_dim": str(r.proj_dim),
            "pred_hidden": "—" if r.pred_hidden is None else str(r.pred_hidden),
            "base_momentum": str(r.base_momentum),
            "momentum_schedule": r.momentum_schedule,
        }
        assert table[name] == want, name


def test_papers_bn_pairs():
    """BYOL: SyncBN both sides; MoCo v2: ShuffleBN key encoder, local student; M2T: local
    student, MomentumBN teacher."""
    assert {n: r.bn for n, r in RECIPES.items()} == {
        "byol": ("sync", "sync"),
        "mocov2": ("local", "shuffle"),
        "m2t": ("local", "momentum"),
    }


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_run_and_bench_resolve_the_same_recipe(tmp_path, name):
    """A file that names only the method (``bnsuite run``) and ``bnsuite bench --method`` get the
    recipe's BN pair, views and evaluated encoder; the built method its momentum and heads."""
    path = tmp_path / "x.yaml"
    path.write_text(
        f"name: t\nmethod: {{name: {name}, queue_size: 64}}\nbatch_size: 8\ndevices: 2\n"
        "optimizer: {warmup_epochs: 0}\nbackbone: test_resnet\ndataset: {image_size: 8}\n"
    )
    (run_cell,) = load_experiment(path, env={}).cells()
    bench = bench_cell(name, backbone="test_resnet", image_size=8, batch_size=8, devices=2)
    r = RECIPES[name]
    for cell in (run_cell, bench):
        assert (cell.student_bn, cell.teacher_bn) == r.bn
        assert cell.eval_encoder == r.eval_encoder
        assert aug_kind(cell.method.name) == r.views
    method = build_method(run_cell, total_steps=10, num_ssl_samples=64)
    assert method.base_momentum == r.base_momentum
    assert method.momentum_schedule == r.momentum_schedule
    assert method.teacher.projector.out_dim == r.proj_dim
    assert (method.student.predictor.__class__.__name__ == "Identity") == (r.pred_hidden is None)


def test_a_file_that_gives_the_bn_pair_keeps_it(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(
        "name: t\noptimizer: {warmup_epochs: 0}\nmatrix:\n  method: [byol, mocov2]\n"
        "include:\n  - {method: byol, bn: [local, momentum]}\n"
    )
    cells = load_experiment(path, env={}).cells()
    pairs = [(c.method.name, c.student_bn, c.teacher_bn) for c in cells]
    assert pairs == [
        ("byol", "sync", "sync"),
        ("mocov2", "local", "shuffle"),
        ("byol", "local", "momentum"),
    ]


def test_momentum_schedule_is_a_checked_key_the_method_reads(tmp_path):
    path = tmp_path / "x.yaml"
    base = "name: t\noptimizer: {warmup_epochs: 0}\nbackbone: test_resnet\n"
    path.write_text(base + "method: {name: mocov2, momentum_schedule: cosine, queue_size: 64}\n")
    (cell,) = load_experiment(path, env={}).cells()
    assert cell.method.momentum_schedule == "cosine"
    method = build_method(cell.replace(batch_size=8), total_steps=10, num_ssl_samples=64)
    assert method.momentum_at(0) == pytest.approx(0.999) and method.momentum_at(10) == 1.0
    path.write_text(base + "method: {name: byol, momentum_schedule: cosin}\n")
    with pytest.raises(Exception, match=re.escape("method.momentum_schedule: 'cosin' is not")):
        load_experiment(path, env={})
