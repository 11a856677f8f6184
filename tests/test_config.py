"""Experiment files: validation messages, matrix expansion, defaults, substitution and cell ids."""

from __future__ import annotations

import dataclasses
import logging
import textwrap
from pathlib import Path

import pytest

from suite.cell import (
    ENCODERS,
    HISTORIES,
    LINEAR_PROTOCOLS,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    STRATEGIES,
    VARIANCES,
    CellConfig,
    EvalConfig,
)
from suite.config import ConfigError, Experiment, load_experiment, schema
from suite.config.schema import CELL, CHECKS, Fan, Leaf, Pair, Section, unchecked_fields
from suite.data import DATASETS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
HEAD = "name: t\ndataset: {name: synthetic, image_size: 16}\n"
NO_WARMUP = (
    "optimizer: {warmup_epochs: 0}\n"  # CellConfig defaults: 1 epoch, 10 warm-up (a warning)
)


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, **kwargs) -> Experiment:
    return load_experiment(write(tmp_path, text), env=kwargs.pop("env", {}), **kwargs)


def errors(tmp_path: Path, text: str, **kwargs) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path, env=kwargs.pop("env", {}), **kwargs)
    assert all(e.startswith(f"{path}: ") for e in info.value.errors)
    return [e[len(f"{path}: ") :] for e in info.value.errors]


def the_error(tmp_path: Path, text: str, **kwargs) -> str:
    found = errors(tmp_path, text, **kwargs)
    assert len(found) == 1, found
    return found[0]


# -- unknown keys ----------------------------------------------------------------------------------
def test_unknown_nested_key_names_path_valid_keys_and_close_match(tmp_path):
    msg = the_error(tmp_path, HEAD + "optimizer: {lr_per256: 0.1}\n")
    assert msg.startswith("optimizer.lr_per256: unknown key; valid keys: name, lr_per_256, ")
    assert msg.endswith("(did you mean 'lr_per_256'?)")


def test_unknown_top_level_key_and_matrix_axis_are_named(tmp_path):
    found = errors(tmp_path, HEAD + "epoch: 3\nmatrix: {batchsize: [32]}\n")
    assert found[0].startswith("epoch: unknown key; valid keys: name, description, matrix")
    assert found[0].endswith("(did you mean 'epochs'?)")
    assert found[1].startswith("matrix.batchsize: unknown key; valid keys: dataset, image_size")
    assert found[1].endswith("(did you mean 'batch_size'?)")


def test_unknown_key_in_include_entry_is_named_with_its_index(tmp_path):
    msg = the_error(tmp_path, HEAD + "include:\n  - {method: m2t}\n  - {teacherbn: sync}\n")
    assert msg.startswith("include[1].teacherbn: unknown key; valid keys: ")
    assert "(did you mean 'teacher_bn'?)" in msg


# -- types and ranges ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("batch_size: 0", "batch_size: 0 is out of range; choose an integer >= 1"),
        ("batch_size: 64.0", "batch_size: 64.0 is not an integer; choose an integer >= 1"),
        ("batch_size: true", "batch_size: True is not an integer; choose an integer >= 1"),
        ("epochs: 0", "epochs: 0 is out of range; choose an integer >= 1"),
        ("max_steps: 0", "max_steps: 0 is out of range; choose an integer >= 1"),
        ("devices: x", "devices: 'x' is not an integer; choose an integer >= 1"),
        ("seed: -1", "seed: -1 is out of range; choose an integer >= 0"),
        (
            "dataset: {num_workers: -1}",
            "dataset.num_workers: -1 is out of range; choose an integer >= 0",
        ),
        (
            "optimizer: {momentum: 1.0}",
            "optimizer.momentum: 1.0 is out of range; choose a number in [0, 1)",
        ),
        (
            "optimizer: {lr_per_256: 0}",
            "optimizer.lr_per_256: 0 is out of range; choose a number > 0",
        ),
        ("optimizer: {weight_decay: .nan}", "optimizer.weight_decay: nan is not a finite number"),
        (
            "method: {base_momentum: 1}",
            "method.base_momentum: 1 is out of range; choose a number in [0, 1)",
        ),
        (
            "method: {temperature: -0.1}",
            "method.temperature: -0.1 is out of range; choose a number > 0",
        ),
        ("method: {symmetric: 1}", "method.symmetric: 1 is not a boolean; choose from true, false"),
        ("eval: {knn: {k: 0}}", "eval.knn.k: 0 is out of range; choose an integer >= 1"),
        (
            "eval: {knn: {temperature: 0}}",
            "eval.knn.temperature: 0 is out of range; choose a number > 0",
        ),
        ("eval: {linear: {batch_size: -2}}", "eval.linear.batch_size: -2 is out of range"),
        (
            "channels_last: maybe",
            "channels_last: 'maybe' is not a boolean; choose from true, false",
        ),
        ("optimizer: 0.1", "optimizer: 0.1 is not a mapping; valid keys: name, lr_per_256"),
    ],
)
def test_bad_type_or_range_names_field_value_and_valid_range(tmp_path, snippet, expected):
    assert the_error(tmp_path, "name: t\n" + snippet + "\n").startswith(expected)


def test_missing_or_empty_name_is_an_error(tmp_path):
    assert the_error(tmp_path, "epochs: 2\n").startswith("name: missing")
    assert the_error(tmp_path, "name: ''\n").startswith("name: '' is not a non-empty")


def test_numbers_written_as_strings_are_read_as_numbers(tmp_path):
    """YAML 1.1 reads ``1e-4`` as a string; it is accepted as the float 0.0001."""
    (cell,) = load(tmp_path, HEAD + "optimizer: {weight_decay: 1e-4}\nepochs: '3'\n").cells()
    assert cell.optimizer.weight_decay == 1e-4 and cell.epochs == 3


# -- registry names --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("snippet", "path", "noun", "choices"),
    [
        ("teacher_bn: momentun", "teacher_bn", "a strategy", STRATEGIES),
        ("method: bayol", "method", "a method", METHODS),
        ("method: {name: mocov3}", "method.name", "a method", METHODS),
        ("optimizer: {name: lars2}", "optimizer.name", "an optimizer", OPTIMIZERS),
        ("bn_variance: oficial", "bn_variance", "a variance convention", VARIANCES),
        ("bn_history: per_devise", "bn_history", "a history layout", HISTORIES),
        ("precision: bf61", "precision", "a precision", PRECISIONS),
        ("eval: {encoder: techer}", "eval.encoder", "an encoder", ENCODERS),
        (
            "eval: {linear: {protocol: augmentd}}",
            "eval.linear.protocol",
            "a linear-probe protocol",
            LINEAR_PROTOCOLS,
        ),
        ("dataset: {name: stl11}", "dataset.name", "a dataset", tuple(DATASETS)),
    ],
)
def test_unknown_registry_name_lists_every_choice_and_suggests(
    tmp_path, snippet, path, noun, choices
):
    msg = the_error(tmp_path, "name: t\n" + snippet + "\n")
    bad = snippet.split(": ")[-1].strip("{}")
    assert msg.startswith(f"{path}: {bad!r} is not {noun}; choose from {', '.join(choices)}")
    assert msg.endswith("?)") and "(did you mean '" in msg


def test_matrix_strategy_typo_message_is_exact(tmp_path):
    msg = the_error(tmp_path, HEAD + "matrix: {teacher_bn: [local, sync, momentun]}\n")
    assert msg == (
        "matrix.teacher_bn[2]: 'momentun' is not a strategy; choose from local, sync, momentum, "
        "shuffle (did you mean 'momentum'?)"
    )


def test_every_dataset_in_the_registry_validates(tmp_path):
    for name in DATASETS:
        (cell,) = load(tmp_path, f"name: t\ndataset: {{name: {name}}}\n").cells()
        assert cell.dataset.name == name


def test_unknown_backbone_is_checked_with_timm_and_suggests(tmp_path):
    msg = the_error(tmp_path, HEAD + "backbone: resnet181\n")
    assert msg == (
        "backbone: 'resnet181' is not a timm model; choose from timm.list_models() "
        "(did you mean 'resnet18'?)"
    )


@pytest.mark.parametrize("strategy", ["momentum", "shuffle"])
def test_teacher_only_strategy_as_student_is_rejected_where_written(tmp_path, strategy):
    top = the_error(tmp_path, HEAD + f"student_bn: {strategy}\n")
    assert top.startswith(f"student_bn: {strategy!r} is a teacher-only strategy")
    assert top.endswith("choose from local, sync for the student")
    pair = the_error(tmp_path, HEAD + f"matrix: {{bn: [[local, local], [{strategy}, sync]]}}\n")
    assert pair.startswith(f"matrix.bn[1][0]: {strategy!r} is a teacher-only strategy")


@pytest.mark.parametrize("teacher", STRATEGIES)
def test_every_strategy_is_a_valid_teacher(tmp_path, teacher):
    (cell,) = load(tmp_path, HEAD + f"devices: 2\nbn: [local, {teacher}]\n").cells()
    assert (cell.student_bn, cell.teacher_bn) == ("local", teacher)


def test_bn_value_that_is_not_a_pair_is_rejected(tmp_path):
    msg = the_error(tmp_path, HEAD + "matrix: {bn: [[local, momentum], local]}\n")
    assert msg.startswith("matrix.bn[1]: 'local' is not a [student, teacher] pair")


# -- combinations ----------------------------------------------------------------------------------
def test_batch_not_divisible_by_devices_names_the_cells_axes(tmp_path):
    msg = the_error(tmp_path, HEAD + "devices: 4\nmatrix: {batch_size: [64, 30]}\n")
    assert msg == (
        "cell 1 (batch_size=30): batch_size: 30 is not divisible by devices=4; choose a multiple "
        "of 4 (each device's BN sees batch_size / devices samples)"
    )


def test_devices_not_a_multiple_of_nproc(tmp_path):
    msg = the_error(tmp_path, HEAD + "batch_size: 60\nnproc: 4\nmatrix: {devices: [4, 6]}\n")
    assert msg.startswith("cell 1 (devices=6): devices: 6 is not a multiple of nproc=4")


def test_one_sample_per_device_is_rejected_for_per_device_bn_only(tmp_path):
    msg = the_error(
        tmp_path, HEAD + "batch_size: 8\ndevices: 8\nmatrix: {bn: [[sync, sync], [local, sync]]}\n"
    )
    assert msg.startswith("cell 1 (bn=[local, sync]): batch_size: 8 over devices=8 leaves 1 sample")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_bn_group_of_one_sample_is_refused_for_every_strategy(tmp_path, strategy):
    """batch_size 1 on one device, the teacher on each strategy (the student on it too where it
    may be, else on sync): every BN group would hold 1 sample (sync normalises each view on its
    own, so its group is one view's batch), so the file is refused naming batch_size, the
    strategy and the smallest valid batch, before any cell is built."""
    student = "sync" if strategy in ("momentum", "shuffle") else strategy
    text = HEAD + NO_WARMUP + f"batch_size: 1\ndevices: 1\nbn: [{student}, {strategy}]\n"
    msg = the_error(tmp_path, text)
    assert msg.startswith("cell 0: batch_size: 1 ") and "at least 2 samples" in msg
    assert f"'{student}'" in msg and "choose batch_size >= 2" in msg


def test_moco_queue_not_a_multiple_of_the_global_batch(tmp_path):
    text = HEAD + "batch_size: 64\nmatrix:\n  method: [byol, {name: mocov2, queue_size: 100}]\n"
    msg = the_error(tmp_path, text)
    assert msg.startswith("cell 1 (method={name: mocov2, queue_size: 100}): method.queue_size: 100")
    assert "choose a multiple of 64" in msg


def test_symmetric_moco_queue_must_hold_whole_steps_of_two_keys_per_image(tmp_path):
    """Symmetric MoCo enqueues 2B keys a step: 192 is a multiple of B = 64 but not of 128."""
    text = HEAD + "batch_size: 64\nmethod: {name: mocov2, queue_size: 192, symmetric: true}\n"
    msg = the_error(tmp_path, text)
    assert "method.queue_size: 192 is not a multiple of 2 x batch_size=128" in msg
    assert "choose a multiple of 128" in msg


def test_moco_inheriting_a_predictor_width_is_rejected(tmp_path):
    text = HEAD + "method: {name: byol, pred_hidden: 512}\nmatrix: {method: [byol, mocov2]}\n"
    msg = the_error(tmp_path, text)
    assert msg.startswith("cell 1 (method=mocov2): method.pred_hidden: 512 with method mocov2")
    text = text.replace("[byol, mocov2]", "[byol, {name: mocov2, pred_hidden: null}]")
    assert [c.method.pred_hidden for c in load(tmp_path, text).cells()] == [512, None]


def test_warmup_not_shorter_than_training_is_a_warning(tmp_path):
    text = "name: t\noptimizer: {warmup_epochs: 10}\nmatrix: {epochs: [20, 5]}\n"
    exp = load(tmp_path, text)
    assert len(exp.cells()) == 2
    (warning,) = exp.warnings
    assert warning.endswith(
        "cell 1 (epochs=5): optimizer.warmup_epochs: 10 is not below epochs=5: the whole run is "
        "warm-up (the lr never reaches lr_per_256 x batch_size / 256); set fewer warm-up epochs "
        "(0 for none) or more epochs"
    )


def test_same_problem_in_many_cells_is_one_line_listing_them(tmp_path):
    msg = the_error(
        tmp_path,
        HEAD + "batch_size: 30\ndevices: 4\nmatrix: {method: [byol, m2t]}\nseeds: [0, 1]\n",
    )
    assert msg.startswith("cells 0-3 (first: method=byol, seed=0): batch_size: 30 is not divisible")


def test_m2t_with_another_teacher_is_a_warning_not_an_error(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="suite.config"):
        exp = load(tmp_path, HEAD + NO_WARMUP + "method: m2t\nteacher_bn: sync\n")
    assert [c.teacher_bn for c in exp.cells()] == ["sync"]
    (warning,) = exp.warnings
    assert warning.endswith(
        "cell 0: teacher_bn: 'sync' with method m2t is an ablation "
        "(Momentum² Teacher uses teacher_bn 'momentum'); it runs as written"
    )
    assert "ablation" in caplog.text


def test_shuffle_on_one_device_warns(tmp_path):
    exp = load(tmp_path, HEAD + NO_WARMUP + "bn: [local, shuffle]\n")
    assert len(exp.cells()) == 1 and "nothing to shuffle" in exp.warnings[0]


def test_two_axes_setting_one_field_are_rejected(tmp_path):
    msg = the_error(tmp_path, HEAD + "matrix: {teacher_bn: [local], bn: [[local, sync]]}\n")
    assert msg == (
        "matrix.bn: sets teacher_bn, which matrix.teacher_bn also sets; merge them into one axis "
        "(e.g. bn pairs instead of student_bn x teacher_bn)"
    )


def test_one_field_given_twice_in_one_mapping_is_rejected(tmp_path):
    msg = the_error(tmp_path, HEAD + "bn: [local, sync]\nteacher_bn: momentum\n")
    assert msg == "teacher_bn: sets teacher_bn which bn[1] already sets; give it once"


def test_repeated_cells_are_rejected(tmp_path):
    msg = the_error(
        tmp_path, HEAD + "matrix: {batch_size: [32, 64]}\ninclude: [{batch_size: 32}]\n"
    )
    assert msg.startswith("cell 2 (include=0, batch_size=32): same resolved values as cell 0")


def test_seeds_conflicts_and_repeats(tmp_path):
    found = errors(tmp_path, HEAD + "seed: 1\nseeds: [0, 0, x]\n")
    assert found == [
        "seeds: given with seed; give one seed (seed: 0) or a list (seeds: [0, 1])",
        "seeds[1]: 0 is repeated; give each seed once",
        "seeds[2]: 'x' is not an integer; choose an integer >= 0",
    ]


# -- YAML and files --------------------------------------------------------------------------------
def test_yaml_syntax_error_gives_the_line(tmp_path):
    msg = the_error(tmp_path, "name: t\nepochs: 2\nmatrix: {bn: [[local, local]\n")
    assert msg.startswith("line 4, column 1: YAML syntax error:")


def test_duplicate_yaml_key_gives_both_lines(tmp_path):
    msg = the_error(tmp_path, "name: t\nepochs: 2\nbatch_size: 4\nepochs: 3\n")
    assert msg == "line 4, column 1: YAML syntax error: duplicate key 'epochs' (first at line 2)"
    msg = the_error(tmp_path, "name: t\noptimizer: {momentum: 0.9, momentum: 0.8}\n")
    assert msg.endswith("duplicate key 'momentum' (first at line 2)")


def test_top_level_that_is_not_a_mapping_and_missing_file(tmp_path):
    assert the_error(tmp_path, "- a\n- b\n").startswith("top level: ['a', 'b'] is not a mapping")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_experiment(tmp_path / "absent.yaml")


def test_every_problem_of_a_file_is_reported_together(tmp_path):
    text = """\
        name: t
        dataset: {name: stl11, image_size: 0}
        epochs: 0
        optimizer: {lr_per256: 0.1}
        matrix: {teacher_bn: [momentun], batch_size: [64, 30]}
        devices: 4
    """
    found = errors(tmp_path, text)
    paths = [e.split(":")[0] for e in found]
    assert paths == [
        "dataset.name", "dataset.image_size", "epochs", "optimizer.lr_per256",
        "matrix.teacher_bn[0]", "cell 1 (teacher_bn=momentun, batch_size=30)",
    ]  # fmt: skip


# -- expansion -------------------------------------------------------------------------------------
def test_matrix_is_a_cross_product_in_file_order_with_seeds_innermost(tmp_path):
    text = HEAD + "matrix:\n  method: [byol, m2t]\n  batch_size: [32, 64, 128]\nseeds: [0, 1]\n"
    cells = load(tmp_path, text).cells()
    assert len(cells) == 2 * 3 * 2
    got = [(c.method.name, c.batch_size, c.seed) for c in cells]
    assert got == [(m, b, s) for m in ("byol", "m2t") for b in (32, 64, 128) for s in (0, 1)]


def test_bn_pairs_are_one_axis_not_a_product(tmp_path):
    pairs = [
        ["sync", "sync"],
        ["local", "local"],
        ["sync", "local"],
        ["local", "sync"],
        ["local", "momentum"],
    ]
    text = HEAD + f"devices: 4\nmatrix:\n  bn: {pairs}\n  seed: [0, 1, 2]\n".replace("'", "")
    exp = load(tmp_path, text)
    assert [[c.student_bn, c.teacher_bn] for c in exp.cells()] == [
        p for p in pairs for _ in range(3)
    ]
    assert exp.axes()[4] == {"bn": ["local", "local"], "seed": 1}


def test_include_cells_follow_the_matrix_and_are_repeated_over_seeds_unless_seeded(tmp_path):
    text = HEAD + (
        "matrix: {bn: [[local, local], [local, sync]]}\n"
        "include:\n  - {method: m2t}\n  - {method: m2t, seed: 7, batch_size: 32}\n"
        "seeds: [0, 1]\n"
    )
    cells = load(tmp_path, text).cells()
    got = [(c.method.name, c.teacher_bn, c.batch_size, c.seed) for c in cells]
    assert got == [
        ("byol", "local", 64, 0), ("byol", "local", 64, 1),
        ("byol", "sync", 64, 0), ("byol", "sync", 64, 1),
        ("m2t", "momentum", 64, 0), ("m2t", "momentum", 64, 1),
        ("m2t", "momentum", 32, 7),
    ]  # fmt: skip


def test_no_matrix_is_one_cell_and_include_alone_is_its_entries(tmp_path):
    assert len(load(tmp_path, HEAD).cells()) == 1
    cells = load(tmp_path, HEAD + "include: [{batch_size: 32}, {batch_size: 16}]\n").cells()
    assert [c.batch_size for c in cells] == [32, 16]


def test_top_level_values_are_defaults_and_axis_mappings_override_only_their_keys(tmp_path):
    text = """\
        name: t
        dataset: {name: synthetic, image_size: 16}
        method: {name: byol, proj_hidden: 512, proj_dim: 128}
        optimizer: {lr_per_256: 0.3}
        epochs: 5
        matrix:
          method: [byol, {name: mocov2, proj_dim: 64, queue_size: 128}]
          image_size: [16, 24]
    """
    cells = load(tmp_path, text).cells()
    assert [(c.method.name, c.method.proj_hidden, c.method.proj_dim) for c in cells[::2]] == [
        ("byol", 512, 128),
        ("mocov2", 512, 64),
    ]
    assert [c.dataset.image_size for c in cells] == [16, 24, 16, 24]
    assert all(
        c.optimizer.lr_per_256 == 0.3 and c.epochs == 5 and c.experiment == "t" for c in cells
    )
    default = CellConfig()
    assert cells[0].optimizer.weight_decay == default.optimizer.weight_decay
    assert cells[0].eval == default.eval and cells[0].log_every == default.log_every


def test_each_method_gets_its_recipes_bn_pair_unless_given(tmp_path):
    """byol → sync/sync, m2t → local/momentum; a value the file gives is kept."""
    text = HEAD + NO_WARMUP + "matrix: {method: [byol, m2t]}\n"
    text += "include: [{method: m2t, student_bn: sync}]\n"
    exp = load(tmp_path, text)
    got = [(c.method.name, c.student_bn, c.teacher_bn) for c in exp.cells()]
    assert got == [
        ("byol", "sync", "sync"),
        ("m2t", "local", "momentum"),
        ("m2t", "sync", "momentum"),
    ]
    assert len(exp.warnings) == 1 and "student_bn: 'sync' with method m2t" in exp.warnings[0]


def test_cifar_stem_and_eval_sections_land_in_the_cell(tmp_path):
    text = (
        HEAD
        + "cifar_stem: false\n"
        + "eval: {knn: {k: 20, temperature: 0.07}, linear: {epochs: 5}, encoder: teacher}\n"
    )
    (cell,) = load(tmp_path, text).cells()
    assert cell.cifar_stem is False
    assert (cell.eval.knn.k, cell.eval.knn.temperature, cell.eval.linear.epochs) == (20, 0.07, 5)
    assert cell.eval_encoder == "teacher"


def test_linear_protocol_defaults_to_cached_and_lands_in_the_cell_and_its_params(tmp_path):
    """eval.linear.protocol: absent → cached; given → the cell's eval.linear.protocol, its
    param, and a cell id of its own."""
    (default,) = load(tmp_path, HEAD + NO_WARMUP).cells()
    text = HEAD + NO_WARMUP + "eval: {linear: {protocol: augmented}}\n"
    (augmented,) = load(tmp_path, text).cells()
    assert default.eval.linear.protocol == "cached"
    assert augmented.flat()["eval.linear.protocol"] == "augmented"
    assert augmented.cell_id != default.cell_id


# -- environment and data root ---------------------------------------------------------------------
def test_env_substitution_with_defaults_and_escape(tmp_path):
    text = """\
        name: ${NAME}
        description: "$${NOT_A_VAR} ${EMPTY:-fallback}"
        dataset: {name: stl10, root: "${DATA:-/data}/stl10"}
        epochs: ${EPOCHS:-2}
    """
    (cell,) = (exp := load(tmp_path, text, env={"NAME": "n", "EMPTY": ""})).cells()
    assert exp.name == "n" and exp.description == "${NOT_A_VAR} fallback"
    assert cell.dataset.root == "/data/stl10" and cell.epochs == 2


def test_missing_variable_without_default_names_the_field(tmp_path):
    """Each unset variable is reported once, at its field (not again as "not an integer")."""
    text = "name: t\ndataset: {name: stl10, root: '${DATA}/stl10'}\nepochs: ${EP}\n"
    found = errors(tmp_path, text)
    assert found == [
        "dataset.root: '${DATA}/stl10': environment variable DATA is not set and has no default; "
        "set DATA or pass --data-root (exported as DATA), or write ${DATA:-default}",
        "epochs: '${EP}': environment variable EP is not set and has no default; set EP, or write "
        "${EP:-default}",
    ]


def test_data_root_is_exported_as_DATA_only_when_the_environment_lacks_it(tmp_path):
    text = "name: t\ndataset: {name: stl10, root: '${DATA}/stl10'}\n"
    (cell,) = load(tmp_path, text, data_root="/cli").cells()
    assert cell.dataset.root == "/cli/stl10"
    (cell,) = load(tmp_path, text, data_root="/cli", env={"DATA": "/env"}).cells()
    assert cell.dataset.root == "/env/stl10"


def test_data_root_is_the_root_when_the_file_gives_none(tmp_path):
    (cell,) = load(tmp_path, "name: t\ndataset: {name: cifar10}\n", data_root="/cli").cells()
    assert cell.dataset.root == "/cli"
    (cell,) = load(
        tmp_path, "name: t\ndataset: {name: cifar10, root: /file}\n", data_root="/cli"
    ).cells()
    assert cell.dataset.root == "/file"
    (cell,) = load(tmp_path, "name: t\ndataset: {name: digits}\n").cells()
    assert cell.dataset.root is None


# -- cell ids --------------------------------------------------------------------------------------
TABLE = """\
    name: t
    dataset: {name: stl10, root: /d/stl10, image_size: 96}
    method: {name: byol, proj_hidden: 512, proj_dim: 128}
    optimizer: {lr_per_256: 0.05, weight_decay: 1.0e-4}
    batch_size: 256
    devices: 8
    matrix:
      bn: [[sync, sync], [local, momentum]]
    seeds: [0, 1]
"""
REORDERED = """\
    seeds: [0, 1]
    devices: 8
    matrix:
      bn: [[sync, sync], [local, momentum]]
    optimizer: {weight_decay: 0.0001, lr_per_256: 5.0e-2}
    method: {proj_dim: 128, name: byol, proj_hidden: 512}
    batch_size: 256
    dataset: {image_size: 96, root: "/d/stl10", name: stl10}
    name: t
"""


def ids(tmp_path: Path, text: str, **kwargs) -> list[str]:
    return [c.cell_id for c in load(tmp_path, text, **kwargs).cells()]


def test_cell_ids_are_stable_across_loads_key_order_and_tracking_uri(tmp_path):
    first = ids(tmp_path, TABLE)
    assert len(set(first)) == 4
    assert ids(tmp_path, TABLE) == first
    assert ids(tmp_path, REORDERED) == first
    assert ids(tmp_path, TABLE, env={"MLFLOW_TRACKING_URI": "http://elsewhere:5000"}) == first


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("batch_size: 256", "batch_size: 512"),
        ("devices: 8", "devices: 16"),
        ("lr_per_256: 0.05", "lr_per_256: 0.06"),
        ("proj_dim: 128", "proj_dim: 256"),
        ("image_size: 96", "image_size: 64"),
        ("seeds: [0, 1]", "seeds: [0, 2]"),
        ("name: t", "name: t2"),
        ("[local, momentum]]", "[local, momentum]]\n    bn_variance: standard"),
    ],
)
def test_any_change_of_a_resolved_value_changes_the_cell_id(tmp_path, old, new):
    """A cell's id changes exactly when its resolved values change (and some cell's do)."""
    before = load(tmp_path, TABLE).cells()
    after = load(tmp_path, TABLE.replace(old, new)).cells()
    changed = [a.to_dict() != b.to_dict() for a, b in zip(after, before, strict=True)]
    assert any(changed)
    assert [a.cell_id != b.cell_id for a, b in zip(after, before, strict=True)] == changed


def _with_added_fields(cell: CellConfig, **new: object) -> CellConfig:
    """``cell`` under a schema that has two more fields with defaults: ``added`` at the top level
    and ``eval.added`` (what a release that adds keys does); ``new`` sets their values."""
    extra_eval = dataclasses.make_dataclass(
        "EvalPlus", [("added", int, dataclasses.field(default=7))], bases=(EvalConfig,), frozen=True
    )
    extra_cell = dataclasses.make_dataclass(
        "CellPlus",
        [
            ("added", str, dataclasses.field(default="off")),
            ("eval", extra_eval, dataclasses.field(default_factory=extra_eval)),
        ],
        bases=(CellConfig,),
        frozen=True,
    )
    values = {f.name: getattr(cell, f.name) for f in dataclasses.fields(cell)}
    evals = {f.name: getattr(cell.eval, f.name) for f in dataclasses.fields(cell.eval)}
    values["eval"] = extra_eval(**evals, added=new.pop("eval_added", 7))
    return extra_cell(**values, **new)


def test_adding_a_field_with_a_default_keeps_every_cell_id(tmp_path):
    """Ids hash only non-default values: the cells of a file keep their ids under a schema with
    new defaulted fields (so finished cells are not run again), and setting a new field to
    another value gives a new id."""
    cells = load(tmp_path, TABLE).cells()
    extended = [_with_added_fields(c) for c in cells]
    assert [e.cell_id for e in extended] == [c.cell_id for c in cells]
    assert all(_with_added_fields(c, added="on").cell_id != c.cell_id for c in cells)
    assert _with_added_fields(cells[0], eval_added=8).cell_id != cells[0].cell_id


def test_writing_a_default_value_keeps_the_cell_id(tmp_path):
    """A value equal to the field's default is the same cell as leaving the key out."""
    explicit = TABLE.replace("batch_size: 256", "batch_size: 256\n    epochs: 1\n    nproc: 1")
    assert ids(tmp_path, explicit) == ids(tmp_path, TABLE)
    assert CellConfig(batch_size=64).cell_id == CellConfig().cell_id


def test_moving_the_data_does_not_change_the_cell_id(tmp_path):
    """The same data at another path is the same cell (dataset.root is not hashed)."""
    text = TABLE.replace("root: /d/stl10, ", "")
    assert ids(tmp_path, text, data_root="/a") == ids(tmp_path, text, data_root="/b")


# -- one name per concept: keys, fields, params ---------------------------------------------------
def schema_keys(spec: Section, prefix: str = "") -> dict[str, object]:
    """Every key path of ``spec`` (a section with a shorthand is a key itself: ``method``)."""
    out: dict[str, object] = {}
    for key, sub in spec.keys.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(sub, Section):
            if sub.shorthand is not None:
                out[path] = sub
            out.update(schema_keys(sub, path))
        else:
            out[path] = sub
    return out


def test_every_key_is_a_field_path_and_an_mlflow_param(tmp_path):
    """Apart from the documented shorthands, a key sets the field of its own path, and the MLflow
    params (``cell.flat()``) of a loaded cell are exactly those keys."""
    keys = schema_keys(CELL)
    shorthands = {"image_size", "bn", "method"} | {k for k, v in keys.items() if isinstance(v, Fan)}
    leaves = {k: v for k, v in keys.items() if k not in shorthands}
    assert all(isinstance(v, Leaf) and ".".join(v.target) == k for k, v in leaves.items())
    (cell,) = load(tmp_path, "name: t\n").cells()
    assert set(cell.flat()) - {"experiment"} == set(leaves)
    assert keys["image_size"] is keys["dataset.image_size"]
    assert keys["bn"] == Pair(keys["student_bn"], keys["teacher_bn"])
    assert keys["aug.flip_p"] == Fan((keys["aug.view1.flip_p"], keys["aug.view2.flip_p"]))


def test_a_field_without_a_check_stops_the_schema(monkeypatch):
    """The schema is derived from the cell: a field added without a check in CHECKS is named (and
    the module refuses to build the schema), as is a check for a field that does not exist."""
    assert unchecked_fields() == ([], [])
    extended = _with_added_fields(CellConfig())
    unchecked, stray = unchecked_fields(type(extended))
    assert sorted(unchecked) == ["added", "eval.added"] and stray == []
    monkeypatch.setitem(CHECKS, "eval.knn.nothing", CHECKS["eval.knn.k"])
    assert unchecked_fields() == ([], ["eval.knn.nothing"])
    with pytest.raises(RuntimeError, match=r"checks for no cell field: \['eval.knn.nothing'\]"):
        schema._cell_schema()


def test_docs_cell_key_table_is_the_schema():
    """experiments/README.md's "Cell keys" table has one row per key (views as ``aug.<key>``,
    ``aug.view1.<key>``, ``aug.view2.<key>``)."""
    text = (EXPERIMENTS / "README.md").read_text()
    section = text.split("\n## Cell keys\n", 1)[1].split("\n### ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    documented = {k.strip(" `") for row in rows for k in row.split(",")}
    written = set()
    for key in schema_keys(CELL):
        if key.startswith(("aug.view1.", "aug.view2.")):
            key = key.rsplit(".", 1)[0] + ".<key>"
        elif key.startswith("aug."):
            key = "aug.<key>"
        written.add(key)
    assert documented == written


# -- the shipped experiment files ------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_file_loads_and_expands(path):
    exp = load_experiment(path, data_root="/datasets", env={})
    cells = exp.cells()
    assert cells and len({c.cell_id for c in cells}) == len(cells)
    assert all(c.experiment == exp.name for c in cells) and not exp.warnings
    for cell in cells:
        assert CellConfig.from_dict(cell.to_dict()) == cell
        assert cell.dataset.name in DATASETS


def test_cpu_experiments_use_offline_data_and_have_the_requested_shape():
    from suite.data import DATASETS

    quick = load_experiment(EXPERIMENTS / "quickstart.yaml", env={})
    ci = load_experiment(EXPERIMENTS / "ci.yaml", env={})
    for exp in (quick, ci):
        names = {c.dataset.name for c in exp.cells()}
        assert names == {"mnist5k"} and not DATASETS["mnist5k"].needs_root  # offline, no root
        assert {c.method.name for c in exp.cells()} >= {"byol", "m2t"}
    assert {c.teacher_bn for c in quick.cells()} == {"local", "sync", "momentum"}
    # CI runs every strategy: local students, sync, momentum and shuffle teachers
    assert {c.teacher_bn for c in ci.cells()} == {"sync", "momentum", "shuffle"}
    assert {c.student_bn for c in ci.cells()} == {"local"}


def test_table1_has_the_papers_five_pairs_at_batch_2048_on_64_devices():
    exp = load_experiment(EXPERIMENTS / "stl10_table1.yaml", env={"DATA": "/d"})
    pairs = {(c.student_bn, c.teacher_bn) for c in exp.cells()}
    assert pairs == {
        ("sync", "sync"),
        ("local", "local"),
        ("sync", "local"),
        ("local", "sync"),
        ("local", "momentum"),
    }
    assert {(c.batch_size, c.devices, c.backbone, c.dataset.root) for c in exp.cells()} == {
        (2048, 64, "resnet18", "/d/stl10")
    }


# -- augmentation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("aug: {flip_p: 1.5}", "aug.flip_p: 1.5 is out of range; choose a number in [0, 1]"),
        (
            "aug: {view2: {solarize_p: -0.1}}",
            "aug.view2.solarize_p: -0.1 is out of range; choose a number in [0, 1]",
        ),
        ("aug: {hue: 0.6}", "aug.hue: 0.6 is out of range; choose a number in [0, 0.5]"),
        ("aug: {brightness: -1}", "aug.brightness: -1 is out of range; choose a number >= 0"),
        (
            "aug: {scale: [0.9, 0.2]}",
            "aug.scale: [0.9, 0.2] is decreasing; write [low, high] with low <= high, both in "
            "(0, 1]",
        ),
        (
            "aug: {view1: {scale: [0, 1]}}",
            "aug.view1.scale: [0, 1]: 0 is out of range; choose a number in (0, 1]",
        ),
        ("aug: {ratio: 0.75}", "aug.ratio: 0.75 is not a [low, high] pair; write [low, high]"),
        (
            "aug: {blur_sigma: [0.1, x]}",
            "aug.blur_sigma: [0.1, 'x']: 'x' is not a number; choose a number > 0",
        ),
        ("aug: {view1: {gray_p: true}}", "aug.view1.gray_p: True is not a number"),
    ],
)
def test_bad_augmentation_value_names_field_value_and_valid_range(tmp_path, snippet, expected):
    assert the_error(tmp_path, HEAD + NO_WARMUP + snippet + "\n").startswith(expected)


def test_unknown_augmentation_key_suggests_and_lists_the_view_keys(tmp_path):
    msg = the_error(tmp_path, HEAD + NO_WARMUP + "aug: {view1: {flip_prob: 0}}\n")
    assert msg.startswith("aug.view1.flip_prob: unknown key; valid keys: scale, ratio, flip_p, ")
    assert msg.endswith("(did you mean 'flip_p'?)")
    msg = the_error(tmp_path, HEAD + NO_WARMUP + "aug: {view3: {}}\n")
    assert "valid keys: scale" in msg and msg.endswith("view1, view2 (did you mean 'view2'?)")


def test_both_views_key_and_one_view_key_for_the_same_field_in_one_mapping_is_rejected(tmp_path):
    msg = the_error(tmp_path, HEAD + NO_WARMUP + "aug: {flip_p: 0, view2: {flip_p: 0.5}}\n")
    assert (
        msg == "aug.view2.flip_p: sets aug.view2.flip_p which aug.flip_p already sets; give it once"
    )


@pytest.mark.parametrize(
    "where",
    ["dataset: {name: digits, blur: true}", "include: [{dataset: {blur: false}}]"],
)
def test_removed_dataset_blur_says_what_replaces_it(tmp_path, where):
    msg = the_error(tmp_path, "name: t\n" + NO_WARMUP + where + "\n")
    assert msg.endswith(
        "dataset.blur: replaced by aug.blur_p (both views) or aug.view1.blur_p / aug.view2.blur_p, "
        "probabilities in [0, 1]; by default the method's recipe, with blur off at <= 64 px"
    )


def test_augmentation_values_enter_the_flat_params_and_the_cell_id(tmp_path):
    (base,) = load(tmp_path, HEAD + NO_WARMUP).cells()
    (other,) = load(tmp_path, HEAD + NO_WARMUP + "aug: {view2: {gray_p: 0.0}}\n").cells()
    assert base.flat()["aug.view2.gray_p"] == 0.2 and other.flat()["aug.view2.gray_p"] == 0.0
    assert base.flat()["aug.view1.scale"] == (0.08, 1.0)
    assert base.cell_id != other.cell_id
