"""A cell's evaluation (suite.probe): on the cell's device, all cores on a CPU, either protocol."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import suite.eval as ev
from suite.cell import (
    LINEAR_PROTOCOLS,
    CellConfig,
    DatasetConfig,
    EvalConfig,
    KnnConfig,
    LinearConfig,
)
from suite.eval import FeaturePlan
from suite.probe import evaluate_cell
from suite.train import build_cell_data

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
STEPS = {
    "cached": ("extract_features", "knn_accuracy", "linear_probe"),
    "augmented": ("extract_features", "knn_accuracy", "linear_probe_augmented"),
}


def cell(protocol: str = "cached") -> CellConfig:
    return CellConfig(
        experiment="test",
        dataset=DatasetConfig(name="digits", image_size=16, num_workers=0),
        backbone="test_resnet",
        eval=EvalConfig(
            knn=KnnConfig(k=5),
            linear=LinearConfig(epochs=4, lr=0.5, batch_size=128, protocol=protocol),
            random_init_floor=False,
        ),
        batch_size=64,
    )


class Method:
    """A trained method as evaluate_cell sees it: its evaluated encoder (8×8 pooling + BN)."""

    def __init__(self, device: torch.device = CPU) -> None:
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.BatchNorm2d(3), nn.Flatten())
        with torch.no_grad():
            self.net[1].running_mean.fill_(-1.0)  # data in [-1, 1]-ish normalised units
            self.net[1].running_var.fill_(2.0)
        self.net.to(device)

    def encoder(self, which: str) -> nn.Module:
        return self.net


@pytest.fixture(scope="module")
def digits():
    return build_cell_data(cell(), CPU)


@pytest.fixture(autouse=True)
def one_core(monkeypatch):
    """Evaluation here uses one core unless a test says otherwise (these probes are tiny, and a
    loaded test machine makes every extra thread a cost)."""
    monkeypatch.setattr("suite.eval.threads.available_cpus", lambda: 1)


@pytest.fixture
def spies(monkeypatch) -> list[tuple[str, torch.device]]:
    """Wrap every evaluation step suite.probe calls; record (step, device) for each tensor it is
    given or returns and for its device arguments."""
    seen: list[tuple[str, torch.device]] = []

    def wrap(name: str) -> None:
        inner = getattr(ev, name)

        def spy(*args, **kwargs):
            out = inner(*args, **kwargs)
            returned = out if isinstance(out, tuple) else ()
            for x in (*args, *kwargs.values(), *returned):
                if isinstance(x, torch.Tensor):
                    seen.append((name, x.device))
            for key in ("device", "out_device"):
                if isinstance(kwargs.get(key), str | torch.device):
                    seen.append((name, torch.device(kwargs[key])))
            return out

        monkeypatch.setattr(ev, name, spy)

    for name in {*STEPS["cached"], *STEPS["augmented"]}:
        wrap(name)
    return seen


@pytest.fixture
def no_named_host_copies(monkeypatch):
    """``Tensor.cpu()`` and ``Tensor.to("cpu", …)`` raise: code that moves tensors only to the
    device it was given cannot bring a GPU's tensors back to the host behind the caller's back."""
    to = torch.Tensor.to

    def guarded_to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, str) and torch.device(target).type == "cpu":
            raise AssertionError(f"Tensor.to({target!r}) on the evaluation path")
        return to(self, *args, **kwargs)

    def refuse_cpu(self, *args, **kwargs):
        raise AssertionError("Tensor.cpu() on the evaluation path")

    monkeypatch.setattr(torch.Tensor, "to", guarded_to)
    monkeypatch.setattr(torch.Tensor, "cpu", refuse_cpu)
    return monkeypatch


@pytest.mark.parametrize("protocol", LINEAR_PROTOCOLS)
def test_cell_evaluation_moves_tensors_only_to_the_cells_device(
    protocol, digits, spies, no_named_host_copies
):
    """evaluate_cell on a CPU cell with Tensor.cpu() and Tensor.to('cpu') refused: it completes,
    each of its steps (feature extraction, kNN, the protocol's linear probe) ran and was given
    and returned tensors on the cell's device only, and the features are recorded as kept there."""
    metrics = evaluate_cell(cell(protocol), Method(), digits, CPU, False)
    no_named_host_copies.undo()
    assert {name for name, _ in spies} == set(STEPS[protocol])
    assert {device for _, device in spies} == {CPU}
    assert metrics["eval/features_on_device"] == 1
    assert metrics["eval/placement"].startswith("on the cell's device (cpu)")
    assert {"knn/top1", "linear/top1", "eval/knn_s", "eval/linear_s"} <= set(metrics)


@pytest.mark.parametrize("protocol", LINEAR_PROTOCOLS)
def test_cpu_cell_evaluation_uses_every_available_core_then_restores_the_threads(
    protocol, digits, monkeypatch
):
    """A cell process limited to 1 thread, 3 cores available: feature extraction, kNN and the
    linear probe each run with 3 threads, 1 is restored afterwards, eval/cpu_threads is 3."""
    import suite.eval.augmented as augmented_module
    import suite.eval.knn as knn_module
    import suite.eval.linear as linear_module

    monkeypatch.setattr("suite.eval.threads.available_cpus", lambda: 3)
    seen: dict[str, set[int]] = {}

    def record(step: str) -> None:
        seen.setdefault(step, set()).add(torch.get_num_threads())

    method = Method()
    method.net.register_forward_pre_hook(lambda module, args: record("encoder"))
    iter_scores, fit = knn_module._iter_scores, linear_module._fit_and_score

    def knn_spy(*args, **kwargs):
        record("knn")
        yield from iter_scores(*args, **kwargs)

    def fit_spy(*args, **kwargs):
        record("linear")
        return fit(*args, **kwargs)

    score = augmented_module._score

    def score_spy(*args, **kwargs):
        record("linear")
        return score(*args, **kwargs)

    monkeypatch.setattr(knn_module, "_iter_scores", knn_spy)
    monkeypatch.setattr(linear_module, "_fit_and_score", fit_spy)
    monkeypatch.setattr(augmented_module, "_score", score_spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        metrics = evaluate_cell(cell(protocol), method, digits, CPU, False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert seen == {"encoder": {3}, "knn": {3}, "linear": {3}}
    assert metrics["eval/cpu_threads"] == 3


def test_features_that_do_not_fit_the_device_are_probed_on_the_cpu_with_the_reason_recorded(
    digits, spies, monkeypatch, capsys
):
    """A plan that sends the features to the CPU (as for a GPU without room): they are gathered
    there, the probes get them there, and the reason is printed to the cell's log and recorded
    (eval/features_on_device 0, eval/placement)."""
    reason = "on the CPU, not cuda: 9.00 GiB needed, more than 90% of the 1.00 GiB free on cuda"
    plans = []

    def plan(device, num_train, num_test, dim):
        plans.append((torch.device(device), num_train, num_test, dim))
        return FeaturePlan(CPU, torch.device("cuda"), 9 * 2**30, 2**30, reason)

    monkeypatch.setattr(ev, "plan_features", plan)
    metrics = evaluate_cell(cell(), Method(), digits, CPU, False)
    assert plans == [(CPU, digits.num_samples("train"), digits.num_samples("test"), 192)]
    assert metrics["eval/features_on_device"] == 0 and metrics["eval/placement"] == reason
    assert metrics["eval/working_set_mb"] == 9 * 1024
    assert f"evaluation: features {reason}" in capsys.readouterr().err
    assert {device for name, device in spies if name == "knn_accuracy"} == {CPU}


def test_the_protocols_are_recorded_apart_and_the_augmented_one_learns_above_chance(digits):
    """cached and augmented cells differ in the param eval.linear.protocol and in their ids; on
    the same encoder their kNN (same cached features) is identical, and the augmented probe, fed
    RandomResizedCrop views, scores well above chance (0.1) on digits."""
    from suite.runner.execute import summary

    cached, augmented = cell("cached"), cell("augmented")
    assert cached.flat()["eval.linear.protocol"] == "cached"
    assert augmented.flat()["eval.linear.protocol"] == "augmented"
    assert cached.cell_id != augmented.cell_id
    assert summary(augmented, "r", {}, None)["protocol"]["linear"]["protocol"] == "augmented"
    by_cached = evaluate_cell(cached, Method(), digits, CPU, False)
    by_augmented = evaluate_cell(augmented, Method(), digits, CPU, False)
    assert by_cached["knn/top1"] == by_augmented["knn/top1"]
    assert by_augmented["linear/top1"] >= 0.3


def test_a_bad_protocol_in_code_is_refused_naming_the_field_and_the_choices():
    with pytest.raises(ValueError) as err:
        LinearConfig(protocol="augmentd")
    assert str(err.value) == (
        "eval.linear.protocol: 'augmentd' is not a linear-probe protocol; "
        "choose from cached, augmented"
    )


@CUDA
@pytest.mark.parametrize("protocol", LINEAR_PROTOCOLS)
def test_cuda_cell_evaluation_keeps_every_tensor_on_the_gpu(protocol, spies):
    """On a CUDA cell every step is given and returns tensors on the GPU, the features are
    recorded as kept there, and no CPU thread count is recorded (none was used)."""
    device = torch.device("cuda", torch.cuda.current_device())
    data = build_cell_data(cell(protocol), device)
    metrics = evaluate_cell(cell(protocol), Method(device), data, device, False)
    assert {name for name, _ in spies} == set(STEPS[protocol])
    assert {d.type for _, d in spies} == {"cuda"}
    assert metrics["eval/features_on_device"] == 1 and "eval/cpu_threads" not in metrics
    assert metrics["linear/top1"] > 0.1


def test_a_floor_over_several_inits_is_the_mean_of_those_inits_and_the_same_for_every_seed(
    digits,
):
    """eval.floor_inits = 2: each ``*_random_init`` is the mean of the two single-init floors
    (each init probed alone, as a one-init cell of that seed), the spread is recorded, the inits
    differ (else the mean would be no better than one), and a cell of another seed gets the
    same floor: it is one number per configuration."""
    from dataclasses import replace

    import suite.probe as probe

    two = replace(cell(), eval=replace(cell().eval, random_init_floor=True, floor_inits=2))
    got = probe.probe_floor(two, digits, CPU, False, None)
    other_seed = probe.probe_floor(replace(two, seed=7), digits, CPU, False, None)
    accuracies = [k for k in got if not k.startswith("eval/")]  # seconds differ, naturally
    assert accuracies and {k: other_seed[k] for k in accuracies} == {k: got[k] for k in accuracies}
    one = replace(two.eval, floor_inits=1)
    singles = [
        probe.probe_floor(replace(two, seed=s, eval=one), digits, CPU, False, None)
        for s in probe.floor_seeds(two)
    ]
    for key in ("knn/top1_random_init", "linear/top1_random_init"):
        values = torch.tensor([s[key] for s in singles], dtype=torch.float64)
        assert len(set(values.tolist())) > 1, f"{key}: the two inits gave one value"
        assert got[key] == pytest.approx(float(values.mean()), abs=1e-12)
        assert got[key + "_std"] == pytest.approx(float(values.std()), abs=1e-12)
    assert "knn/top1_random_init_std" not in singles[0]  # one init: no spread


def test_one_floor_init_is_the_cells_own_seed_and_several_are_the_same_for_every_seed():
    """floor_inits = 1 pairs the floor with the trained encoder's init (the cell's seed); with
    K > 1 the K inits are fixed, so every seed of a configuration is judged against one floor."""
    from dataclasses import replace

    from suite.probe import FLOOR_SEED_BASE, floor_seeds

    one = [floor_seeds(replace(cell(), seed=s)) for s in (0, 7)]
    assert one == [[0], [7]]
    many = replace(cell(), eval=replace(cell().eval, floor_inits=4))
    fixed = [floor_seeds(replace(many, seed=s)) for s in (0, 7)]
    assert fixed[0] == fixed[1] == [FLOOR_SEED_BASE + i for i in range(4)]
