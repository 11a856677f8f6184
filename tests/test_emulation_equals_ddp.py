"""One process emulating D = 2 devices computes what DDP on 2 gloo processes computes, at every
step, for every method and every (student, teacher) BN pair it supports.

Ten training steps (of K = 12, so MomentumBN's β and the EMA momentum have moved well away from
their start), float64, SGD with momentum. Compared at every step: the loss (DDP: the mean of the
ranks' losses), the teacher's outputs (each rank's share of every view), the student parameters,
every BN buffer of the student and of the teacher (rank 0's, which DDP checkpoints and
evaluates; for MomentumBN every per-device history: rank r's own history is the emulation's
history r) and MoCo's queue. One spawn of 2 processes computes every case.
"""

from __future__ import annotations

import pytest
import torch
from distributed import run_gloo

from suite.cell import CellConfig, DatasetConfig, MethodConfig
from suite.methods import build_method

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SIZE, BATCH, DEVICES, WORLD = 8, 8, 2, 2
STEPS, TOTAL_STEPS = 10, 12
STUDENTS = ("local", "sync")
TEACHERS = ("local", "sync", "momentum", "shuffle")
# (method, symmetric): BYOL with every pair; M2T (BYOL with a MomentumBN teacher) with its
# teacher and both students; MoCo v2 with every pair, and symmetric with the per-device teachers
# whose state depends on views per step (MomentumBN's lazy update, ShuffleBN's permutations).
CASES = (
    [("byol", False, s, t) for s in STUDENTS for t in TEACHERS]
    + [("m2t", False, s, "momentum") for s in STUDENTS]
    + [("mocov2", False, s, t) for s in STUDENTS for t in TEACHERS]
    + [("mocov2", True, "local", t) for t in ("momentum", "shuffle")]
)
# float64 with other summation orders (per-rank sums then all-reduce): agreement to ~1e-12.
TOL = {"rtol": 1e-8, "atol": 1e-10}
MOMENTUM_KEYS = ("device_mean", "device_var", "pending_mean", "pending_var")


def make_cell(name: str, symmetric: bool, student_bn: str, teacher_bn: str, **kw) -> CellConfig:
    if name == "mocov2":
        queue = (4 if symmetric else 3) * BATCH  # whole steps of B (2B symmetric) keys
        heads = {"proj_hidden": 16, "proj_dim": 8, "queue_size": queue, "symmetric": symmetric}
    else:
        heads = {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16}
    return CellConfig(
        backbone="test_resnet",
        dataset=DatasetConfig(image_size=SIZE),
        method=MethodConfig(name=name, base_momentum=0.9, **heads),
        batch_size=BATCH,
        devices=DEVICES,
        student_bn=student_bn,
        teacher_bn=teacher_bn,
        **kw,
    )


def global_views(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    shape = (BATCH, 3, SIZE, SIZE)
    return (
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64) * 0.5 + 0.3,
    )


def train(case: tuple, rank: int = 0, world: int = 1, **cell_kw) -> list[dict]:
    """STEPS steps of ``case`` on this rank's contiguous share of every global batch (one
    thread: on a shared 2-core machine two threads of these tiny float64 ops run ~7× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(case, rank, world, **cell_kw)
    finally:
        torch.set_num_threads(threads)


def _train(case: tuple, rank: int, world: int, **cell_kw) -> list[dict]:
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    m = build_method(make_cell(*case, **cell_kw), total_steps=TOTAL_STEPS, num_ssl_samples=100)
    m.double()
    if world > 1:
        m.wrap_student(DistributedDataParallel)  # broadcast_buffers=True, as in train_cell
    teacher_out: list[torch.Tensor] = []
    forward_teacher = m.forward_teacher

    def recording(views):
        outs = forward_teacher(views)
        teacher_out.extend(o.detach().clone() for o in outs)
        return outs

    m.forward_teacher = recording
    opt = torch.optim.SGD(m.student_parameters(), lr=0.05, momentum=0.9)
    mine = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    record = []
    for step in range(STEPS):
        x1, x2 = global_views(step)
        torch.manual_seed(1000 + step)  # ShuffleBN's permutation: the same draw on every rank
        teacher_out.clear()
        loss, logs = m.training_step(x1[mine], x2[mine], step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        record.append(
            {
                "loss": loss.detach().clone(),
                "teacher_out": list(teacher_out),
                "student": fingerprint(m.student.parameters()),
                "teacher": fingerprint(m.teacher.parameters()),
                "student_buffers": {k: v.clone() for k, v in m.student.named_buffers()},
                "teacher_buffers": {k: v.clone() for k, v in m.teacher.named_buffers()},
                "queue": m.queue.clone() if hasattr(m, "queue") else None,
                "beta": logs.get("teacher_bn_beta"),
                "momentum": logs["teacher_momentum"],
            }
        )
    # the full parameters at the last step (every step's would be ~6 MB × 10 × cases × ranks)
    record[-1]["student_full"] = [p.detach().clone() for p in m.student.parameters()]
    record[-1]["teacher_full"] = [p.detach().clone() for p in m.teacher.parameters()]
    return record


_PROBES: dict[int, torch.Tensor] = {}


def fingerprint(params) -> torch.Tensor:
    """[tensors, 3]: per parameter tensor its sum, L2 norm and projection on a fixed random
    direction (seeded by its size): two tensors that differ by more than the comparison's
    tolerance differ here too, almost surely."""
    rows = []
    for p in params:
        flat = p.detach().reshape(-1).double()
        if flat.numel() not in _PROBES:
            g = torch.Generator().manual_seed(flat.numel())
            _PROBES[flat.numel()] = torch.randn(flat.numel(), generator=g, dtype=torch.float64)
        rows.append(torch.stack([flat.sum(), flat.norm(), flat @ _PROBES[flat.numel()]]))
    return torch.stack(rows)


def _worker(rank: int, world: int) -> dict:
    return {case: train(case, rank, world) for case in CASES}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """One spawn of 2 gloo processes trains every case (process start-up dominates)."""
    return run_gloo(_worker, WORLD, tmp_path_factory.mktemp("emulation_ddp"))


def _share(t: torch.Tensor, rank: int) -> torch.Tensor:
    n = t.shape[0] // WORLD
    return t[rank * n : (rank + 1) * n]


def assert_step_equal(ref: dict, got: list[dict], step: int, case: tuple) -> None:
    where = f"{case} step {step}"
    loss = sum(r["loss"] for r in got) / WORLD
    torch.testing.assert_close(loss, ref["loss"], **TOL, msg=f"{where}: loss")
    for v, want in enumerate(ref["teacher_out"]):
        have = torch.cat([r["teacher_out"][v] for r in got])
        torch.testing.assert_close(have, want, **TOL, msg=f"{where}: teacher output {v}")
    for rank, r in enumerate(got):
        for side in ("student", "teacher", "student_full", "teacher_full"):
            if side not in ref:
                continue
            for i, (a, b) in enumerate(zip(r[side], ref[side], strict=True)):
                torch.testing.assert_close(a, b, **TOL, msg=f"{where}: rank {rank} {side} p{i}")
        if ref["queue"] is not None:
            torch.testing.assert_close(r["queue"], ref["queue"], **TOL, msg=f"{where}: queue")
    for side in ("student_buffers", "teacher_buffers"):
        assert got[0][side].keys() == ref[side].keys()
        for key, want in ref[side].items():
            if key.rpartition(".")[2] in MOMENTUM_KEYS:
                # [D, C] per-device histories (and pending sums): rank r holds row r
                have = torch.cat([r[side][key] for r in got])
            else:  # rank 0's buffer: what DDP checkpoints and evaluates
                have = got[0][side][key]
            torch.testing.assert_close(have, want, **TOL, msg=f"{where}: {side} {key}")


def case_id(case: tuple) -> str:
    return f"{case[0]}{'-sym' if case[1] else ''}-{case[2]}-{case[3]}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_emulated_devices_equal_ddp_at_every_step(case, ranks):
    """Emulation (1 process, devices=2) == DDP (2 gloo processes × 1 device) at all 10 steps:
    loss, teacher outputs, student and teacher parameters, every BN buffer, MoCo's queue."""
    ref = train(case)
    got = [r[case] for r in ranks]
    for step in range(STEPS):
        assert_step_equal(ref[step], [g[step] for g in got], step, case)
    # the EMA and the schedules have moved: the comparison covers the mixing regime
    assert ref[-1]["momentum"] < 1.0
    last, first = ref[-1]["teacher"], ref[0]["teacher"]  # [tensors, 3] fingerprints
    assert not torch.isclose(last, first).all(dim=1)[:3].any()  # the stem moved by the EMA
    if case[3] == "momentum":
        assert 0.0 < ref[-1]["beta"] < 0.2  # β_9 of K = 12: 0.146


def test_a_shared_momentum_history_is_not_what_ddp_computes(ranks):
    """The comparison can fail: with the shared-history ablation the teacher's outputs equal
    DDP's at step 0 (β = 1: no history is used yet) and differ from step 1 on."""
    case = ("m2t", False, "local", "momentum")
    shared = train(case, bn_history="shared")
    got = [r[case] for r in ranks]
    for step in range(2):
        same = [
            torch.allclose(torch.cat([g[step]["teacher_out"][v] for g in got]), want, **TOL)
            for v, want in enumerate(shared[step]["teacher_out"])
        ]
        assert same == [step == 0] * 2, step
