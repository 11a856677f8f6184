"""The two views of a cell: recipe < small-image rule < dataset default < file, and what trains."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import torch

from suite.cell import AugConfig, CellConfig, DatasetConfig, MethodConfig
from suite.config import load_experiment
from suite.data import DATASETS
from suite.train import build_cell_data
from suite.views import ViewSpec, cell_views, resolve_views, view_specs


def load_cells(tmp_path: Path, text: str) -> list[CellConfig]:
    path = tmp_path / "x.yaml"
    path.write_text("name: t\noptimizer: {warmup_epochs: 0}\n" + textwrap.dedent(text))
    return load_experiment(path, env={}).cells()


def test_digit_datasets_carry_no_flip_and_other_datasets_no_default():
    """The dataset defaults are in the registry: digits/mnist/mnist5k flip_p 0, others none."""
    digits = ("digits", "mnist", "mnist5k")
    assert all(dict(DATASETS[n].view_defaults) == {"flip_p": 0.0} for n in digits)
    assert all(not info.view_defaults for n, info in DATASETS.items() if n not in digits)


def test_precedence_recipe_then_small_image_rule_then_dataset_then_file():
    """Each step overrides the previous one key by key, and leaves the other keys alone."""
    b1, b2 = view_specs("byol")
    assert resolve_views("byol", 96) == (b1, b2)  # recipe: blur 1.0 / 0.1 above 64 px
    small = resolve_views("byol", 32)
    assert (small[0].blur_p, small[1].blur_p) == (0.0, 0.0)  # small-image rule
    assert small[1].solarize_p == 0.2 and small[0].flip_p == 0.5
    ds = resolve_views("byol", 32, {"flip_p": 0.0})
    assert (ds[0].flip_p, ds[1].flip_p) == (0.0, 0.0)  # dataset default, both views
    filed = resolve_views("byol", 32, {"flip_p": 0.0}, {"flip_p": 0.3, "blur_p": 0.7}, {})
    assert filed[0] == dataclasses.replace(b1, flip_p=0.3, blur_p=0.7)  # the file wins
    assert filed[1] == dataclasses.replace(b2, flip_p=0.0, blur_p=0.0)


def test_loaded_cell_resolves_both_views_per_method_dataset_and_file(tmp_path):
    """digits → no flip; mocov2 → its recipe; aug.<key> both views; aug.viewN.<key> one view."""
    cells = load_cells(
        tmp_path,
        """\
        dataset: {name: digits, image_size: 32}
        aug: {scale: [0.4, 1.0], view2: {solarize_p: 0.0}}
        matrix:
          method: [byol, mocov2]
        include:
          - {method: byol, dataset: {name: synthetic}, aug: {flip_p: 0.25}}
        """,
    )
    byol, moco, synth = cells
    b1, b2 = view_specs("byol", blur=False)
    assert byol.aug.view1 == dataclasses.replace(b1, scale=(0.4, 1.0), flip_p=0.0)
    assert byol.aug.view2 == dataclasses.replace(b2, scale=(0.4, 1.0), flip_p=0.0, solarize_p=0.0)
    m1, _ = view_specs("mocov2", blur=False)
    assert moco.aug.view1 == moco.aug.view2 == dataclasses.replace(m1, scale=(0.4, 1.0), flip_p=0.0)
    # the include entry replaces the dataset (no default) and adds a file value of its own
    assert synth.aug.view1 == dataclasses.replace(b1, scale=(0.4, 1.0), flip_p=0.25)


def test_file_value_beats_the_dataset_default_and_a_matrix_axis_beats_the_top_level(tmp_path):
    cells = load_cells(
        tmp_path,
        """\
        dataset: {name: digits, image_size: 16}
        aug: {flip_p: 0.5, blur_p: 0.2}
        matrix:
          aug: [{}, {view1: {blur_p: 1.0}}]
        """,
    )
    assert [(c.aug.view1.flip_p, c.aug.view1.blur_p, c.aug.view2.blur_p) for c in cells] == [
        (0.5, 0.2, 0.2),
        (0.5, 1.0, 0.2),
    ]
    assert cells[0].cell_id != cells[1].cell_id


def test_the_views_reaching_the_augmentation_are_the_files(tmp_path):
    """build_cell_data (what train_cell uses) hands TwoViewAugment exactly the cell's views."""
    (cell,) = load_cells(
        tmp_path,
        """\
        dataset: {name: digits, image_size: 16, num_workers: 0}
        batch_size: 32
        aug:
          scale: [0.5, 0.9]
          ratio: [0.9, 1.1]
          brightness: 0.3
          hue: 0.0
          view1: {blur_p: 0.6, blur_sigma: [0.2, 0.8], contrast: 0.1}
          view2: {solarize_p: 0.4, solarize_threshold: 0.7, gray_p: 0.0, jitter_p: 0.5}
        """,
    )
    data = build_cell_data(cell, torch.device("cpu"))
    assert data.augment.specs == (cell.aug.view1, cell.aug.view2)
    v1, v2 = data.augment.specs
    assert (v1.scale, v1.ratio, v1.flip_p, v1.blur_p, v1.blur_sigma) == (
        (0.5, 0.9),
        (0.9, 1.1),
        0.0,
        0.6,
        (0.2, 0.8),
    )
    assert v1.jitter == (0.3, 0.1, 0.2, 0.0) and v2.jitter == (0.3, 0.4, 0.2, 0.0)
    assert (v2.solarize_p, v2.solarize_threshold, v2.gray_p, v2.jitter_p) == (0.4, 0.7, 0.0, 0.5)
    x, y = next(iter(data.ssl_epoch(0)))
    assert x.shape == y.shape == (32, 3, 16, 16)


def test_cell_built_in_code_gets_recipe_and_dataset_default_at_run_time():
    """AugConfig() (None): the method's recipe with the dataset's defaults; a given view is kept."""
    cell = CellConfig(
        dataset=DatasetConfig(name="digits", image_size=16), method=MethodConfig("mocov2")
    )
    m1, m2 = view_specs("mocov2", blur=False)
    assert cell_views(cell) == (
        dataclasses.replace(m1, flip_p=0.0),
        dataclasses.replace(m2, flip_p=0.0),
    )
    own = ViewSpec(scale=(1.0, 1.0))
    assert cell_views(cell.replace(aug=AugConfig(view1=own)))[0] == own


@pytest.mark.parametrize("name", ["quickstart.yaml", "ci.yaml"])
def test_cpu_experiment_cells_round_trip_through_json_with_their_views(name):
    """The child process rebuilds the cell from JSON: tuples come back as tuples, same id."""
    import json

    path = Path(__file__).resolve().parents[1] / "experiments" / name
    for cell in load_experiment(path, env={}).cells():
        back = CellConfig.from_dict(json.loads(json.dumps(cell.to_dict())))
        assert back == cell and back.cell_id == cell.cell_id
        assert isinstance(back.aug.view1.scale, tuple)
