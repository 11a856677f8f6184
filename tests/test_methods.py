"""Teacher–student methods: EMA, schedules, BYOL/M2T and MoCo v2 losses, fused views, queue."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from suite.cell import CellConfig, DatasetConfig, MethodConfig
from suite.methods import METHODS, MoCoV2, build_method
from suite.methods.base import cosine_momentum
from suite.methods.mocov2 import info_nce, queue_length
from suite.recipes import RECIPES

SIZE, BATCH = 8, 8
HEADS = {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32}
MOCO_HEADS = {"proj_hidden": 32, "proj_dim": 16, "queue_size": 3 * BATCH}
# Same math, other float32 summation order (one conv over 2B samples vs two over B; DDP's
# all-reduce of per-rank sums): gradients agree to ~1e-5 relative, not bit for bit.
REORDERED = {"rtol": 1e-4, "atol": 1e-4}


def make_cell(method="byol", student_bn="local", teacher_bn="local", devices=1, **overrides):
    heads = MOCO_HEADS if method == "mocov2" else HEADS
    if overrides.get("symmetric"):  # 2B keys per step: a queue of 2 steps' keys
        heads = {**heads, "queue_size": 4 * BATCH}
    method_cfg = MethodConfig(name=method, **{**heads, **overrides})
    return CellConfig(
        backbone="test_resnet",
        dataset=DatasetConfig(image_size=SIZE),
        method=method_cfg,
        batch_size=BATCH,
        devices=devices,
        student_bn=student_bn,
        teacher_bn=teacher_bn,
    )


def make(method="byol", *, total_steps=4, seed=0, **cell_kw):
    torch.manual_seed(seed)
    return build_method(make_cell(method, **cell_kw), total_steps=total_steps, num_ssl_samples=100)


def views(seed=1, batch=BATCH):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, SIZE, SIZE, generator=g), torch.randn(
        batch, 3, SIZE, SIZE, generator=g
    )


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


def clone_params(module):
    return [p.detach().clone() for p in module.parameters()]


# -- base: teacher, EMA, schedule, validation ------------------------------------------------------
def test_teacher_starts_as_a_copy_of_the_student_without_gradients():
    m = make()
    for t, s in zip(m.teacher.parameters(), m.student.encoder.parameters(), strict=True):
        assert torch.equal(t, s) and t is not s
        assert not t.requires_grad
    assert not any(p is q for p in m.student_parameters() for q in m.teacher.parameters())


def test_ema_equals_m_teacher_plus_one_minus_m_student_and_leaves_buffers_alone():
    """θ_t ← m·θ_t + (1 − m)·θ_s over parameters; the teacher's BN buffers are its own."""
    m = make()
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(torch.randn_like(p))
        for b in m.student.buffers():
            b.add_(3)
    t0, s0 = clone_params(m.teacher), clone_params(m.student.encoder)
    buffers0 = [b.clone() for b in m.teacher.buffers()]
    m.update_teacher(0.9)
    for t, a, b in zip(m.teacher.parameters(), t0, s0, strict=True):
        torch.testing.assert_close(t, 0.9 * a + (1 - 0.9) * b, rtol=0, atol=1e-6)
    assert all(torch.equal(b, b0) for b, b0 in zip(m.teacher.buffers(), buffers0, strict=True))


def test_cosine_momentum_is_m0_at_start_midway_and_one_at_the_end():
    """m_k = 1 − (1 − m0)(cos(πk/K)+1)/2: m0 at 0, 1 − (1 − m0)/2 at K/2, 1 at K."""
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert make("byol", total_steps=100).momentum_at(50) == pytest.approx(0.995)


def test_moco_momentum_is_constant_0999_by_default():
    m = make("mocov2")
    assert [m.momentum_at(k) for k in (0, 2, 4)] == [0.999] * 3


@pytest.mark.parametrize("bad", ["momentum", "shuffle", "group"])
def test_teacher_only_or_unknown_student_bn_is_refused(bad):
    with pytest.raises(ValueError, match=rf"student_bn: '{bad}'.*valid choices: local, sync"):
        make(student_bn=bad)


def test_unknown_teacher_bn_and_method_are_refused():
    with pytest.raises(ValueError, match=r"teacher_bn: 'mom'.*local, sync, momentum, shuffle"):
        make(teacher_bn="mom")
    with pytest.raises(ValueError, match=r"method.name: 'simclr'.*byol, mocov2, m2t"):
        make("simclr")


def test_batch_not_divisible_by_devices_is_refused():
    with pytest.raises(ValueError, match=r"batch_size: 8 is not divisible by devices=3"):
        make(devices=3)


def test_encoder_returns_the_chosen_backbone():
    m = make()
    assert m.encoder("student") is m.student.encoder.backbone
    assert m.encoder("teacher") is m.teacher.backbone
    with pytest.raises(ValueError, match=r"eval.encoder: 'online'"):
        m.encoder("online")


def test_wrapped_student_runs_the_forward_and_keeps_state_dict_names():
    """wrap_student (DDP in the loop) routes forwards through the wrapper; names stay unwrapped."""
    m = make()
    keys = list(m.state_dict())
    calls = []

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            calls.append(len(x))
            return self.module(x)

    m.wrap_student(Wrapper)
    m.training_step(*views(), step=0)
    assert calls == [2 * BATCH]  # both views in one call (DDP-safe)
    assert list(m.state_dict()) == keys


# -- BYOL / M2T ------------------------------------------------------------------------------------
def test_byol_loss_equals_4_minus_2_sum_of_cosines_from_module_outputs():
    """loss = mean(4 − 2(⟨q̂1, k̂1⟩ + ⟨q̂2, k̂2⟩)), q_i = student(x_i), k1 = teacher(x2),
    k2 = teacher(x1)."""
    m = make("byol")
    ref = copy.deepcopy(m)
    x1, x2 = views()
    loss, logs = m.training_step(x1, x2, step=0)
    ref.update_teacher(ref.momentum_at(0))
    q1, q2 = ref.student(x1), ref.student(x2)
    with torch.no_grad():
        k1, k2 = ref.teacher(x2), ref.teacher(x1)
    cos1 = (unit(q1) * unit(k1)).sum(1)
    cos2 = (unit(q2) * unit(k2)).sum(1)
    torch.testing.assert_close(loss, (4 - 2 * (cos1 + cos2)).mean())
    assert isinstance(logs["loss"], torch.Tensor) and not logs["loss"].requires_grad
    assert float(logs["loss"]) == pytest.approx(loss.item())
    assert logs["teacher_momentum"] == pytest.approx(0.99)


def test_byol_teacher_sees_x2_before_x1():
    """Official call order: teacher(x2), then teacher(x1) (matters for MomentumBN and ShuffleBN)."""
    m = make("byol")
    m.fuse_views = False
    seen = []
    m.teacher.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x1, x2 = views()
    m.training_step(x1, x2, step=0)
    assert torch.equal(seen[0], x2) and torch.equal(seen[1], x1)


@pytest.mark.parametrize(
    ("student_bn", "teacher_bn"),
    [("local", "local"), ("sync", "sync"), ("local", "momentum"), ("sync", "momentum")],
)
def test_fused_views_equal_separate_forwards(student_bn, teacher_bn):
    """cat([x1, x2]) under concat_views == one forward per view: outputs, loss, grads, BN state.

    Two steps with an SGD step between, two emulated devices, so MomentumBN's history (β < 1) and
    the lazy update are exercised. Each step starts both copies from the same state: tiny
    rounding differences would otherwise grow through the SGD step (BN over 8 samples amplifies).
    """
    fused = make("m2t", student_bn=student_bn, teacher_bn=teacher_bn, devices=2)
    separate = copy.deepcopy(fused)
    separate.fuse_views = False
    outputs = {}
    for name, m in (("fused", fused), ("separate", separate)):
        rec = outputs[name] = {"student": [], "teacher": []}
        m.student.register_forward_hook(lambda mod, a, out, r=rec: r["student"].append(out))
        m.teacher.register_forward_hook(lambda mod, a, out, r=rec: r["teacher"].append(out))
    opts = [torch.optim.SGD(m.student_parameters(), lr=0.5) for m in (fused, separate)]
    for step in range(2):
        x1, x2 = views(seed=step)
        separate.load_state_dict(fused.state_dict())
        results = []
        for m, opt in zip((fused, separate), opts, strict=True):
            loss, _ = m.training_step(x1, x2, step)
            opt.zero_grad()
            loss.backward()
            results.append((loss, [p.grad.clone() for p in m.student_parameters()]))
            opt.step()
        (loss_f, grads_f), (loss_s, grads_s) = results
        torch.testing.assert_close(loss_f, loss_s)
        for g_f, g_s in zip(grads_f, grads_s, strict=True):
            torch.testing.assert_close(g_f, g_s, **REORDERED)
        for side in ("student", "teacher"):
            torch.testing.assert_close(
                torch.cat(outputs["fused"][side]), torch.cat(outputs["separate"][side]), **REORDERED
            )
            outputs["fused"][side].clear()
            outputs["separate"][side].clear()
        state_f, state_s = fused.state_dict(), separate.state_dict()
        for key in state_f:
            torch.testing.assert_close(state_f[key], state_s[key], **REORDERED, msg=key)
    if teacher_bn == "momentum":
        assert fused._momentum_layer.step == 2  # two lazy commits, one per step


def test_m2t_logs_the_momentum_bn_beta_of_the_step():
    """β_k = (cos(πk/K) + 1)/2 of the first teacher layer, for the step's forwards (k = 0, 1)."""
    m = make("m2t", student_bn="local", teacher_bn="momentum", total_steps=4)
    betas = [m.training_step(*views(), step=k)[1]["teacher_bn_beta"] for k in range(2)]
    assert betas == pytest.approx([1.0, (math.cos(math.pi / 4) + 1) / 2])


# -- MoCo v2 ---------------------------------------------------------------------------------------
def test_info_nce_equals_cross_entropy_over_positive_then_queue_logits():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    queue = F.normalize(torch.randn(12, 5, generator=g), dim=1)
    logits = torch.cat([(unit(q) * unit(k)).sum(1, keepdim=True), unit(q) @ queue.T], 1) / 0.2
    by_hand = -(logits[:, 0] - logits.logsumexp(dim=1)).mean()
    torch.testing.assert_close(info_nce(q, k, queue, 0.2), by_hand)


@pytest.mark.parametrize("symmetric", [False, True])
def test_moco_loss_from_module_outputs_and_keys_enqueued(symmetric):
    """loss = InfoNCE(student(x1), teacher(x2), queue); afterwards the first B rows of the queue
    hold normalize(teacher(x2)) and the pointer is B. Symmetric (MoCo's own variant): the sum
    with InfoNCE(student(x2), teacher(x1)), and both keys enqueued — rows [0, B) teacher(x1),
    [B, 2B) teacher(x2), pointer 2B."""
    m = make("mocov2", symmetric=symmetric)
    ref = copy.deepcopy(m)
    x1, x2 = views()
    loss, _ = m.training_step(x1, x2, step=0)
    ref.update_teacher(ref.momentum_at(0))
    with torch.no_grad():
        k1, k2 = ref.teacher(x2), ref.teacher(x1)
    expected = info_nce(ref.student(x1), k1, ref.queue, 0.2)
    enqueued = [unit(k1)]
    if symmetric:
        expected = expected + info_nce(ref.student(x2), k2, ref.queue, 0.2)
        enqueued = [unit(k2), unit(k1)]
    torch.testing.assert_close(loss, expected)
    rows = len(enqueued) * BATCH
    torch.testing.assert_close(m.queue[:rows], torch.cat(enqueued))
    assert torch.equal(m.queue[rows:], ref.queue[rows:])
    assert int(m.queue_ptr) == rows


def test_enqueue_writes_at_the_pointer_and_wraps_around():
    """Queue of 3 batches: the pointer runs 0 → B → 2B → 0, the 4th batch overwrites rows [0, B)."""
    m = make("mocov2")
    assert m.queue.shape == (3 * BATCH, 16)
    pointers = []
    for i in range(4):
        m.enqueue(torch.full((BATCH, 16), float(i)))
        pointers.append(int(m.queue_ptr))
    assert pointers == [BATCH, 2 * BATCH, 0, BATCH]
    assert m.queue[:BATCH].eq(3).all() and m.queue[BATCH : 2 * BATCH].eq(1).all()
    assert m.queue[2 * BATCH :].eq(2).all()
    assert {"queue", "queue_ptr"} <= set(m.state_dict())


def test_queue_length_is_sized_down_to_whole_batches_of_the_data():
    """K = min(queue_size, ⌊N/B⌋·B); a queue that is not a multiple of B is an error."""
    assert queue_length(65536, 256, 50_000) == 195 * 256
    assert queue_length(4096, 256, 50_000) == 4096
    with pytest.raises(ValueError, match=r"method.queue_size: 1000 is not a positive multiple"):
        queue_length(1000, 256, 50_000)
    with pytest.raises(ValueError, match=r"100 samples, fewer than one global batch of 256"):
        queue_length(65536, 256, 100)


def test_symmetric_queue_holds_whole_steps_of_two_keys_per_image():
    """Symmetric MoCo enqueues 2B keys a step: K is sized to ⌊N/B⌋·2B and must be a multiple of
    2B (a multiple of B only is refused, here and in the experiment-file check)."""
    assert queue_length(10**6, 256, 50_000, keys_per_step=512) == 195 * 512
    with pytest.raises(ValueError, match=r"multiple of the keys per step \(2 x batch\) 512"):
        queue_length(256 * 3, 256, 50_000, keys_per_step=512)
    with pytest.raises(ValueError, match="keys per step"):
        make("mocov2", symmetric=True, queue_size=3 * BATCH)


def test_a_queue_over_half_the_ssl_set_is_warned_about(caplog):
    """Queue 24 of 40 samples (> half): a warning naming both numbers; 24 of 100: none."""
    torch.manual_seed(0)
    with caplog.at_level("WARNING", logger="suite.methods.mocov2"):
        build_method(make_cell("mocov2"), total_steps=4, num_ssl_samples=40)
    assert "holds 24 keys, more than half of the 40 SSL samples" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="suite.methods.mocov2"):
        make("mocov2")
    assert caplog.text == ""


def test_moco_rejects_a_predictor():
    with pytest.raises(ValueError, match=r"method.pred_hidden: 32; MoCo v2 has no predictor"):
        make("mocov2", pred_hidden=32)


def test_shuffle_bn_with_one_device_gives_exactly_the_unshuffled_keys():
    """devices=1: BN statistics do not depend on the order, so unshuffle(f(shuffle(x))) == f(x);
    with 2 devices the chunks hold other samples and the keys change (the point of ShuffleBN)."""
    batch = 16
    x = views(batch=batch)[0]
    for devices in (1, 2):
        plain = make("mocov2", teacher_bn="local", devices=devices)
        shuffled = make("mocov2", teacher_bn="shuffle", devices=devices)
        seen = []
        shuffled.teacher.register_forward_pre_hook(lambda mod, args, s=seen: s.append(args[0]))
        torch.manual_seed(0)
        (k_shuffled,) = shuffled.forward_teacher([x])
        (k_plain,) = plain.forward_teacher([x])
        assert not torch.equal(seen[0], x)  # the teacher did see a permuted batch
        if devices == 1:
            torch.testing.assert_close(k_shuffled, k_plain)
        else:
            assert not torch.allclose(k_shuffled, k_plain, atol=1e-4)


@pytest.mark.parametrize(("symmetric", "views_per_step"), [(False, 1), (True, 2)])
def test_moco_momentum_teacher_commits_once_per_step(symmetric, views_per_step):
    """MomentumBN's lazy update counts the key encoder's views per step (1, or 2 symmetric)."""
    m = make("mocov2", teacher_bn="momentum", symmetric=symmetric)
    assert m._momentum_layer.views_per_step == views_per_step
    m.training_step(*views(), step=0)
    assert m._momentum_layer.step == 1


# -- every registered method -----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_optimizer_step_trains_the_student_and_the_teacher_follows_by_ema_only(name):
    """Step 0 then step 1 with the method's own BN pair on 2 devices: the student moves by SGD; the
    teacher gets no gradient and after step 1 equals m1·θ_t + (1 − m1)·θ_s (θ_s after step 0)."""
    r = RECIPES[name]
    m = make(name, student_bn=r.student_bn, teacher_bn=r.teacher_bn, devices=2)
    opt = torch.optim.SGD(m.student_parameters(), lr=0.5)
    s_before = clone_params(m.student)
    loss, logs = m.training_step(*views(seed=0), step=0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and {"loss", "teacher_momentum"} <= set(logs)
    assert any(not torch.equal(a, b) for a, b in zip(s_before, m.student.parameters(), strict=True))
    assert all(p.grad is None for p in m.teacher.parameters())
    t0, s1 = clone_params(m.teacher), clone_params(m.student.encoder)
    m.training_step(*views(seed=1), step=1)
    mom = m.momentum_at(1)
    for t, a, b in zip(m.teacher.parameters(), t0, s1, strict=True):
        torch.testing.assert_close(t, mom * a + (1 - mom) * b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_dict_resumes_bit_identically(name):
    """Train 2 steps, load the state into a freshly built method (other seed): step 3 is identical
    (teacher, BN histories and pending views, queue and pointer all travel in state_dict)."""
    r = RECIPES[name]
    cell_kw = {"student_bn": r.student_bn, "teacher_bn": r.teacher_bn, "devices": 2}
    a = make(name, **cell_kw)
    opt_a = torch.optim.SGD(a.student_parameters(), lr=0.5, momentum=0.9)
    for step in range(2):
        loss, _ = a.training_step(*views(seed=step), step=step)
        opt_a.zero_grad()
        loss.backward()
        opt_a.step()
    b = make(name, seed=123, **cell_kw)
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.SGD(b.student_parameters(), lr=0.5, momentum=0.9)
    opt_b.load_state_dict(opt_a.state_dict())
    losses = []
    for m in (a, b):
        torch.manual_seed(7)  # ShuffleBN's permutation comes from the global generator
        losses.append(m.training_step(*views(seed=2), step=2)[0])
    assert torch.equal(losses[0], losses[1])
    state_a, state_b = a.state_dict(), b.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_registry_builds_the_named_class():
    assert isinstance(make("mocov2"), MoCoV2)
    assert METHODS["m2t"].name == "m2t" and RECIPES["m2t"].bn == ("local", "momentum")
    assert make_cell("m2t").eval_encoder == "teacher"


# DDP == emulated devices (every method and BN pair, 10 steps): tests/test_emulation_equals_ddp.py


@pytest.mark.parametrize(
    ("method", "student_bn", "teacher_bn"),
    [
        ("byol", "local", "local"),
        ("byol", "sync", "sync"),
        ("m2t", "local", "momentum"),
        ("mocov2", "local", "shuffle"),
    ],
)
def test_channels_last_stem_equals_the_nchw_stem_under_every_bn_strategy(
    method, student_bn, teacher_bn
):
    """A max-pool stem runs channels-last on the CPU (suite.models); through every strategy's BN
    layers on two emulated devices, two training steps give the losses, student gradients,
    teacher parameters and BN buffers (MomentumBN's history included) of the same method without
    the stem hook, up to float rounding."""
    cell = make_cell(method, student_bn=student_bn, teacher_bn=teacher_bn, devices=2).replace(
        cifar_stem=False
    )
    torch.manual_seed(0)
    ours = build_method(cell, total_steps=4, num_ssl_samples=100)
    plain = copy.deepcopy(ours)
    for backbone in (plain.student.encoder.backbone, plain.teacher.backbone):
        assert backbone._forward_pre_hooks  # the hook is there to be removed
        backbone._forward_pre_hooks.clear()
    opts = [torch.optim.SGD(m.student_parameters(), lr=0.1) for m in (ours, plain)]
    g = torch.Generator().manual_seed(2)
    for step in range(2):
        x1, x2 = (torch.randn(BATCH, 3, 16, 16, generator=g) for _ in range(2))
        losses = []
        for m, opt in zip((ours, plain), opts, strict=True):
            torch.manual_seed(step)  # ShuffleBN draws its permutation from the global generator
            loss, _ = m.training_step(x1, x2, step)
            opt.zero_grad()
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], **REORDERED)
        for (n, pa), pb in zip(
            ours.student.named_parameters(), plain.student.parameters(), strict=True
        ):
            # rounding, relative to the whole gradient (an element near zero has no relative size;
            # a bias before BN has a zero gradient made of rounding only: the 1e-6 floor)
            assert (pa.grad - pb.grad).norm() <= 1e-4 * pb.grad.norm() + 1e-6, n
        for opt in opts:
            opt.step()
        theirs = plain.state_dict()
        for n, a in ours.state_dict().items():
            if a.is_floating_point():
                assert (a - theirs[n]).norm() <= 1e-4 * theirs[n].norm() + 1e-6, n
            else:
                assert torch.equal(a, theirs[n]), n
        plain.load_state_dict(ours.state_dict())  # rounding must not grow through the steps
