"""The training loop: schedules, determinism, resume, divergence, DDP == emulated devices."""

import dataclasses
import math
import os

import pytest
import torch
from distributed import run_gloo

from suite.cell import (
    CellConfig,
    DatasetConfig,
    EvalConfig,
    KnnConfig,
    LinearConfig,
    MethodConfig,
    OptimizerConfig,
)
from suite.train import (
    CheckpointError,
    TrainingDiverged,
    build_cell_data,
    build_optimizer,
    build_scheduler,
    train_cell,
)


def tiny_cell(**overrides) -> CellConfig:
    base = dict(
        experiment="test",
        dataset=DatasetConfig(name="synthetic", image_size=16, num_workers=0),
        backbone="resnet10t",
        cifar_stem=False,
        method=MethodConfig(name="byol", proj_hidden=32, proj_dim=16, pred_hidden=32),
        optimizer=OptimizerConfig(lr_per_256=0.5, warmup_epochs=0.1),
        eval=EvalConfig(knn=KnnConfig(k=5), linear=LinearConfig(epochs=3), random_init_floor=False),
        epochs=1,
        max_steps=4,
        batch_size=16,
        devices=2,
        checkpoint_every=2,
        log_every=1,
    )
    base.update(overrides)
    return CellConfig(**base)


def _final_state(workdir):
    return torch.load(os.path.join(workdir, "checkpoint.pt"), weights_only=True)["method"]


def test_lr_schedule_is_linear_warmup_then_cosine_to_zero():
    """lr_k: warmup_lr → base over W steps, then base·(1+cos(π(k−W)/(K−W)))/2."""
    cell = tiny_cell(optimizer=OptimizerConfig(lr_per_256=0.256, warmup_epochs=1, warmup_lr=1e-6))
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(cell, params, world_batch=1000)
    base = 0.256 * 1000 / 256
    sched = build_scheduler(cell, opt, total_steps=20, steps_per_epoch=4)
    lrs = []
    for k in range(20):
        sched.step_update(num_updates=k)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[2] == pytest.approx(1e-6 + (base - 1e-6) * 2 / 4)
    for k in range(4, 20):
        assert lrs[k] == pytest.approx(base * (1 + math.cos(math.pi * (k - 4) / 16)) / 2)


def test_deterministic_with_a_seed_and_resume_is_bit_identical(tmp_path):
    """4 straight steps == 2 steps, interruption, resume for 2 more (CPU): identical weights."""
    cell = tiny_cell(
        teacher_bn="momentum",
        method=MethodConfig(name="m2t", proj_hidden=32, proj_dim=16, pred_hidden=32),
    )
    a, b = tmp_path / "a", tmp_path / "b"
    ma = train_cell(cell, device="cpu", workdir=a, evaluate=False)
    out = train_cell(cell, device="cpu", workdir=b, evaluate=False, stop_at_step=2)
    assert out == {"interrupted_at": 2}
    mb = train_cell(cell, device="cpu", workdir=b, evaluate=False)
    assert mb["train/resumed_at"] == 2 and ma["train/steps"] == mb["train/steps"] == 4
    sa, sb = _final_state(a), _final_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    # and a fresh run with the same seed reproduces the first
    mc = train_cell(cell, device="cpu", workdir=tmp_path / "c", evaluate=False)
    assert mc["train/loss_final"] == ma["train/loss_final"]


def test_non_finite_loss_stops_the_cell(tmp_path):
    """An exploding learning rate gives a non-finite loss: TrainingDiverged names the step (the
    state checks at logging/checkpoint steps are moved out of the way: the loss check is per
    step)."""
    cell = tiny_cell(
        optimizer=OptimizerConfig(lr_per_256=1e30, warmup_epochs=0),
        max_steps=8,
        log_every=100,
        checkpoint_every=100,
    )
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf|-inf) at step \d"):
        train_cell(cell, device="cpu", workdir=tmp_path, evaluate=False)


def test_exploding_weights_under_a_bounded_loss_stop_the_cell_unsaved(tmp_path):
    """lr_per_256 = 1e6: BYOL's loss stays finite (it is bounded) while the weights and BN
    statistics explode. The check at the logging/checkpoint step 5 raises TrainingDiverged naming
    the step and the tensor, before the checkpoint of that step is written."""
    cell = tiny_cell(
        optimizer=OptimizerConfig(lr_per_256=1e6, warmup_epochs=0),
        max_steps=5,
        log_every=5,
        checkpoint_every=5,
    )
    losses = []
    with pytest.raises(TrainingDiverged) as err:
        train_cell(
            cell,
            device="cpu",
            workdir=tmp_path,
            progress=lambda s, t, logs: losses.append(logs["loss"]),
        )
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)  # the loss never told
    message = str(err.value)
    assert message.startswith("at step 5: ")
    assert "is diverged" in message and "2**64" in message
    tensor = message.removeprefix("at step 5: ").split()[0]
    assert tensor.startswith(("student.", "teacher.")), tensor
    assert not (tmp_path / "checkpoint.pt").exists()


def test_evaluation_refuses_diverged_features(tmp_path):
    """An evaluated encoder whose parameters are finite but whose features are NaN: evaluate_cell
    raises TrainingDiverged naming the encoder and the split, instead of reporting accuracies."""
    from suite.probe import evaluate_cell

    class NaNFeatures(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 4), float("nan"))

    class Method:
        def encoder(self, which):
            return NaNFeatures()

    cell = tiny_cell()
    data = build_cell_data(cell, torch.device("cpu"))
    with pytest.raises(TrainingDiverged, match="the student's train features are diverged"):
        evaluate_cell(cell, Method(), data, torch.device("cpu"), False)


def test_corrupt_checkpoint_fails_once_naming_the_file_then_the_cell_restarts(tmp_path):
    """A checkpoint torch cannot read: CheckpointError names the file and says to run again; the
    cell's checkpoint files (every rank's) are moved aside, so the next run starts at step 0."""
    cell = tiny_cell(max_steps=2)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "checkpoint.rank1.pt").write_bytes(b"left by rank 1")
    with pytest.raises(CheckpointError) as err:
        train_cell(cell, device="cpu", workdir=tmp_path, evaluate=False)
    message = str(err.value)
    assert str(tmp_path / "checkpoint.pt") in message and "Run the same command again" in message
    assert not (tmp_path / "checkpoint.pt").exists()
    assert not (tmp_path / "checkpoint.rank1.pt").exists()
    moved = sorted(p.name for p in tmp_path.glob("*.corrupt-*"))
    assert [m.split(".corrupt-")[0] for m in moved] == ["checkpoint.pt", "checkpoint.rank1.pt"]
    again = train_cell(cell, device="cpu", workdir=tmp_path, evaluate=False)
    assert again["train/resumed_at"] == 0 and again["train/steps"] == 2


def test_metrics_of_a_finished_cell(tmp_path):
    """Throughput figures and probes (with their random-init floor) are reported."""
    cell = tiny_cell(
        eval=EvalConfig(knn=KnnConfig(k=5), linear=LinearConfig(epochs=3), random_init_floor=True)
    )
    logged = []
    m = train_cell(cell, device="cpu", workdir=tmp_path, log_metrics=lambda d, s: logged.append(s))
    for key in [
        "images_per_s",
        "step_ms",
        "data_wait_fraction",
        "peak_memory_mb",
        "knn/top1",
        "linear/top1",
        "linear/top5",
        "knn/top1_random_init",
        "linear/top1_random_init",
        "wall_time_s",
    ]:
        assert key in m and math.isfinite(m[key]), key
    assert 0.0 <= m["data_wait_fraction"] <= 1.0
    assert logged == [1, 2, 3, 4]


def _ddp_worker(rank, world, workdir, cell_dict):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    cell = CellConfig.from_dict(cell_dict)
    losses = []
    train_cell(
        cell,
        device="cpu",
        workdir=workdir,
        evaluate=False,
        progress=lambda s, t, logs: losses.append(logs["loss"]),
    )
    return losses


@pytest.mark.distributed
@pytest.mark.parametrize("bn", [("local", "local"), ("sync", "sync")])
def test_ddp_on_two_processes_equals_two_emulated_devices(bn, tmp_path):
    """torchrun-style DDP (2 gloo ranks) computes the same losses as 2 emulated devices."""
    student, teacher = bn
    single = tiny_cell(student_bn=student, teacher_bn=teacher, max_steps=3)
    losses = []
    train_cell(
        single,
        device="cpu",
        workdir=tmp_path / "single",
        evaluate=False,
        progress=lambda s, t, logs: losses.append(logs["loss"]),
    )
    ddp = single.replace(nproc=2)
    ranks = run_gloo(_ddp_worker, 2, tmp_path, str(tmp_path / "ddp"), ddp.to_dict())
    # each rank's loss is the mean over its half: their mean is the global loss
    ddp_losses = [(a + b) / 2 for a, b in zip(ranks[0], ranks[1], strict=True)]
    assert ddp_losses == pytest.approx(losses, rel=1e-4, abs=1e-5)


def test_lars_excludes_bn_and_biases_from_weight_decay_and_adaptation():
    """BYOL's rule (optimizer.exclude_bn_and_bias, default on): one LARS step moves a bias and a
    BN weight by exactly −lr·grad (no decay, no trust ratio) and a conv weight by the trust-ratio
    adapted, decayed step; with the rule off the BN weight is adapted too."""
    from suite.train import parameter_groups

    def step(exclude):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        optimizer = OptimizerConfig(name="lars", lr_per_256=0.1, weight_decay=0.5, momentum=0.0)
        cell = tiny_cell(optimizer=dataclasses.replace(optimizer, exclude_bn_and_bias=exclude))
        opt = build_optimizer(cell, parameter_groups(cell, net), world_batch=256)
        net(torch.randn(2, 3, 5, 5)).square().sum().backward()
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        grads = {n: p.grad.clone() for n, p in net.named_parameters()}
        opt.step()
        return {n: p.detach() - before[n] for n, p in net.named_parameters()}, grads

    moved, grads = step(True)
    for name in ("0.bias", "1.weight", "1.bias"):
        torch.testing.assert_close(moved[name], -0.1 * grads[name])
    assert not torch.allclose(moved["0.weight"], -0.1 * grads["0.weight"])
    moved_off, _ = step(False)
    assert not torch.allclose(moved_off["1.weight"], -0.1 * grads["1.weight"])


def test_deferred_loss_watch_names_the_first_bad_step_only_when_read():
    """CUDA's mode, run on CPU tensors: seeing a loss never reads it on the host, and the read at
    the next logging step raises naming the first non-finite step, not a later one."""
    from suite.train import LossWatch

    watch = LossWatch(torch.device("cpu"), deferred=True)
    for step, value in enumerate([1.0, 2.0, float("nan"), 3.0, float("inf")]):
        assert watch.see(torch.tensor(value), step) is None  # recorded, never raised here
    with pytest.raises(TrainingDiverged, match=r"non-finite at step 2 \(read at step 4\)"):
        watch.read(4)
    clean = LossWatch(torch.device("cpu"), deferred=True)
    for step in range(3):
        clean.see(torch.tensor(0.5 * step), step)
    clean.read(2)  # finite losses: nothing raised


def test_immediate_loss_watch_returns_the_host_loss_and_raises_at_the_bad_step():
    from suite.train import LossWatch

    watch = LossWatch(torch.device("cpu"), deferred=False)
    assert watch.see(torch.tensor(1.5), 0) == 1.5
    with pytest.raises(TrainingDiverged, match=r"loss became inf at step 7"):
        watch.see(torch.tensor(float("inf")), 7)


def test_a_cell_killed_after_its_last_checkpoint_resumes_with_its_training_metrics(tmp_path):
    """Killed during evaluation (its checkpoint is at the last step): the resumed cell trains no
    step, yet returns train/loss_final equal to the uninterrupted cell's, images_per_s, step_ms
    and data_wait_fraction, and emits the whole loss curve (steps 1..4) equal to the
    uninterrupted one; a cell resumed midway (step 2) emits steps 1..4 too, not only 3..4."""
    cell = tiny_cell()  # 4 steps, a checkpoint every 2, a log line every step

    def logger(into):
        return lambda values, step: into.append((step, values))

    straight_log: list = []
    straight = train_cell(
        cell, device="cpu", workdir=tmp_path / "a", evaluate=False, log_metrics=logger(straight_log)
    )
    for stop in (4, 2):
        workdir = tmp_path / f"stopped{stop}"
        assert train_cell(
            cell, device="cpu", workdir=workdir, evaluate=False, stop_at_step=stop
        ) == {"interrupted_at": stop}
        resumed_log: list = []
        resumed = train_cell(
            cell, device="cpu", workdir=workdir, evaluate=False, log_metrics=logger(resumed_log)
        )
        assert resumed["train/resumed_at"] == stop
        assert resumed["train/loss_final"] == straight["train/loss_final"]
        assert resumed["images_per_s"] > 0 and resumed["step_ms"] > 0
        assert 0 <= resumed["data_wait_fraction"] <= 1
        assert [s for s, _ in resumed_log] == [1, 2, 3, 4]
        assert resumed_log == straight_log


def test_a_full_disk_names_the_checkpoint_folder_and_its_free_space(small_filesystem):
    """A checkpoint larger than its filesystem (a real 256 KiB tmpfs): save_atomic raises
    DiskFull (an OSError ENOSPC) naming the folder and its free space, not torch's 'unexpected
    pos'; no temporary file is left and the previous checkpoint still loads."""
    import errno

    from suite.runtime import DiskFull, save_atomic

    folder = small_filesystem("256k")
    path = folder / "checkpoint.pt"
    save_atomic({"step": 1}, path)
    with pytest.raises(DiskFull) as err:
        save_atomic({"step": 2, "big": torch.zeros(2**20)}, path)
    message = str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert "no space left on device" in message and str(folder) in message
    assert "free of 256.0 KiB" in message and "unexpected pos" not in message
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt"]
    assert torch.load(path, weights_only=True) == {"step": 1}
