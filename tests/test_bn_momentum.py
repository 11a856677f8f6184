"""``momentum`` strategy: MomentumBN against the paper's and the official code's equations,
written out here."""

import math

import pytest
import torch
import torch.nn.functional as F

from suite.bn import MomentumBatchNorm1d, MomentumBatchNorm2d, concat_views


def beta(k, total):
    return (math.cos(math.pi * k / total) + 1) / 2


def reference_step(views, hist_mean, hist_var, k, total, devices, variance, weight, bias, eps=1e-5):
    """One training step of the official MomentumBN, from the paper's equations.

    ``hist_mean``/``hist_var`` are [H, C]: H = D per-device histories (what D GPUs of the official
    code hold) or H = 1 shared history (the ablation). Each view, each device chunk d: μ̂ = β·μ_B +
    (1−β)·μ_hist(d), σ̂² = β·s²_B + (1−β)·σ²_hist(d), with s²_B = torch.var(unbiased)·n/(n−1)
    (official) or the biased var (standard) and hist(d) = row d (per device) or row 0 (shared);
    after all views, history_d ← β·mean_over_views(stats of chunk d) + (1−β)·history_d
    (per device), or the shared row ← β·mean over views and chunks + (1−β)·row.
    """
    b_k = beta(k, total)
    rows = hist_mean.shape[0]
    outs = []
    means = [[] for _ in range(devices)]
    variances = [[] for _ in range(devices)]
    for x in views:
        chunks = []
        for d, c in enumerate(x.chunk(devices)):
            h = d if rows > 1 else 0
            dims = [0] + list(range(2, c.dim()))
            n = c.numel() // c.shape[1]
            mu = c.mean(dim=dims)
            var_unbiased = c.var(dim=dims, unbiased=True)
            if variance == "official":
                s2_norm = var_unbiased * n / (n - 1)
                s2_hist = s2_norm
            else:
                s2_norm = var_unbiased * (n - 1) / n
                s2_hist = var_unbiased
            m_hat = b_k * mu + (1 - b_k) * hist_mean[h]
            v_hat = b_k * s2_norm + (1 - b_k) * hist_var[h]
            shape = [1, -1] + [1] * (c.dim() - 2)
            y = (c - m_hat.view(shape)) / torch.sqrt(v_hat.view(shape) + eps)
            chunks.append(y * weight.view(shape) + bias.view(shape))
            means[d].append(mu)
            variances[d].append(s2_hist)
        outs.append(torch.cat(chunks))
    per_device_mean = torch.stack([torch.stack(m).mean(0) for m in means])  # [D, C]
    per_device_var = torch.stack([torch.stack(v).mean(0) for v in variances])
    if rows == 1:
        per_device_mean = per_device_mean.mean(0, keepdim=True)
        per_device_var = per_device_var.mean(0, keepdim=True)
    new_mean = b_k * per_device_mean + (1 - b_k) * hist_mean
    new_var = b_k * per_device_var + (1 - b_k) * hist_var
    return outs, new_mean, new_var


def test_batch_weight_schedule():
    """β = 1 at k = 0, (cos(πk/K)+1)/2 after k steps, 0 at K, clamped after K."""
    bn = MomentumBatchNorm1d(3, total_steps=4, views_per_step=1)
    seen = []
    for _ in range(6):
        seen.append(bn.batch_weight)
        bn(torch.randn(8, 3))
    expected = [1.0, beta(1, 4), 0.5, beta(3, 4), 0.0, 0.0]
    assert seen == pytest.approx(expected, abs=1e-12)
    assert seen[2] == pytest.approx(0.5)


@pytest.mark.parametrize("variance", ["official", "standard"])
@pytest.mark.parametrize(
    ("devices", "history"), [(1, "per_device"), (2, "per_device"), (2, "shared")]
)
@pytest.mark.parametrize("two_d", [True, False])
def test_matches_reference_equations_step_by_step(variance, devices, history, two_d):
    """Five steps of two views: outputs and every history (per device, or the shared one) equal
    the equations at every step; running_mean/var are device 0's history."""
    torch.manual_seed(0)
    total, c = 5, 4
    cls = MomentumBatchNorm2d if two_d else MomentumBatchNorm1d
    bn = cls(c, total_steps=total, variance=variance, devices=devices, history=history)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    rows = devices if history == "per_device" else 1
    hist_mean, hist_var = torch.zeros(rows, c), torch.ones(rows, c)
    for k in range(total + 1):
        shape = (8, c, 3, 3) if two_d else (8, c)
        views = [torch.randn(*shape) * (k + 1) + k, torch.randn(*shape) * 0.5 - k]
        ref_outs, hist_mean, hist_var = reference_step(
            views, hist_mean, hist_var, k, total, devices, variance, bn.weight, bn.bias
        )
        outs = [bn(v) for v in views]  # official order teacher(x2), teacher(x1) is just order
        for got, want in zip(outs, ref_outs, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.device_mean, hist_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.device_var, hist_var, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_mean, hist_mean[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, hist_var[0], rtol=1e-5, atol=1e-6)
        assert bn.step == k + 1


def test_lazy_update_second_view_independent_of_first():
    """The second view's output does not depend on the first view's input (no leak)."""
    torch.manual_seed(0)
    bn_a = MomentumBatchNorm2d(3, total_steps=10)
    for _ in range(3):  # move into the mixing regime (β < 1)
        bn_a(torch.randn(4, 3, 2, 2))
        bn_a(torch.randn(4, 3, 2, 2))
    bn_b = MomentumBatchNorm2d(3, total_steps=10)
    bn_b.load_state_dict(bn_a.state_dict())
    assert 0 < bn_a.batch_weight < 1
    second = torch.randn(4, 3, 2, 2)
    bn_a(torch.randn(4, 3, 2, 2))
    bn_b(torch.randn(4, 3, 2, 2) * 10 + 5)  # a very different first view
    torch.testing.assert_close(bn_a(second), bn_b(second))
    # ... but the *next* step does see the committed statistics of both views
    nxt = torch.randn(4, 3, 2, 2)
    assert not torch.allclose(bn_a(nxt), bn_b(nxt))


def test_standard_variance_at_beta_one_is_train_mode_batchnorm():
    """variance="standard", β = 1 (step 0): output == nn.BatchNorm2d in train mode."""
    x = torch.randn(16, 5, 4, 4) * 2 + 3
    bn = MomentumBatchNorm2d(5, total_steps=100, variance="standard")
    ref = torch.nn.BatchNorm2d(5)
    torch.testing.assert_close(bn(x), ref(x), rtol=1e-5, atol=1e-5)


def test_official_variance_is_double_bessel():
    """variance="official" at β = 1 normalises with (n/(n−1))²·σ²_biased."""
    x = torch.randn(4, 2, 2, 2)  # n = 16 per channel
    bn = MomentumBatchNorm2d(2, total_steps=10, variance="official", affine=False)
    n = 16
    var = x.var(dim=(0, 2, 3), unbiased=False) * (n / (n - 1)) ** 2
    ref = (x - x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    torch.testing.assert_close(bn(x), ref, rtol=1e-5, atol=1e-5)


def test_eval_normalises_with_history():
    """Eval mode == F.batch_norm with the history buffers."""
    bn = MomentumBatchNorm2d(3, total_steps=6)
    for _ in range(4):
        bn(torch.randn(8, 3, 2, 2) + 2)
    bn.eval()
    x = torch.randn(8, 3, 2, 2)
    ref = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, 1e-5)
    torch.testing.assert_close(bn(x), ref)
    assert bn.step == 2  # eval forwards do not advance the schedule


def test_state_dict_round_trip_mid_step():
    """Saved after the first view of a step, a fresh layer finishes the step identically."""
    torch.manual_seed(0)
    a = MomentumBatchNorm2d(3, total_steps=8, devices=2)
    for _ in range(2):  # step 0: two views
        a(torch.randn(8, 3, 2, 2))
    a(torch.randn(8, 3, 2, 2))  # first view of step 1 (pending)
    state = {k: v.clone() for k, v in a.state_dict().items()}
    assert int(state["pending_views"]) == 1 and int(state["num_batches_tracked"]) == 1
    b = MomentumBatchNorm2d(3, total_steps=8, devices=2)
    b.load_state_dict(state)
    x2, x3 = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2)
    torch.testing.assert_close(a(x2), b(x2))
    torch.testing.assert_close(a(x3), b(x3))
    for key in a.state_dict():
        torch.testing.assert_close(a.state_dict()[key], b.state_dict()[key])


@pytest.mark.parametrize("devices", [1, 2])
def test_concat_views_equals_two_forwards(devices):
    """One fused forward of both views == two forwards (outputs and committed history)."""
    torch.manual_seed(0)
    a = MomentumBatchNorm2d(3, total_steps=5, devices=devices)
    b = MomentumBatchNorm2d(3, total_steps=5, devices=devices)
    for _ in range(3):
        v1, v2 = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2) * 3
        sep = torch.cat([a(v1), a(v2)])
        with concat_views(b, 2):
            fused = b(torch.cat([v1, v2]))
        torch.testing.assert_close(fused, sep, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.running_mean, a.running_mean)
        torch.testing.assert_close(b.running_var, a.running_var)
    assert a.step == b.step == 3


def test_crossing_a_step_boundary_is_an_error():
    """Two fused views after one pending view would mix steps: refused."""
    bn = MomentumBatchNorm2d(3, total_steps=5)
    bn(torch.randn(4, 3, 2, 2))
    with pytest.raises(ValueError, match="step boundary"), concat_views(bn, 2):
        bn(torch.randn(8, 3, 2, 2))


def test_gradient_flows_to_input_and_affine_only():
    """Statistics are detached: dy/dx = γ/sqrt(σ̂²+ε) elementwise (a pure affine map of x)."""
    bn = MomentumBatchNorm1d(2, total_steps=5, views_per_step=1)
    x = torch.randn(6, 2, requires_grad=True)
    bn(x).sum().backward()
    n = 6
    var = x.detach().var(dim=0, unbiased=False) * (n / (n - 1)) ** 2
    expected = (bn.weight.detach() / torch.sqrt(var + 1e-5)).expand(6, 2)
    torch.testing.assert_close(x.grad, expected)
    assert bn.weight.grad is not None and bn.bias.grad is not None


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="total_steps"):
        MomentumBatchNorm2d(3, total_steps=0)
    with pytest.raises(ValueError, match="official, standard"):
        MomentumBatchNorm2d(3, total_steps=5, variance="bessel")


def test_per_device_histories_differ_and_each_follows_only_its_own_chunk():
    """Two devices fed very different chunks: after a step with β < 1 the two histories differ,
    and device 1's history is unchanged when only device 0's chunk changes (no cross-device
    reduction, as on GPUs); the shared ablation mixes both chunks into one row."""
    torch.manual_seed(0)
    a = MomentumBatchNorm1d(3, total_steps=4, views_per_step=1, devices=2)
    b = MomentumBatchNorm1d(3, total_steps=4, views_per_step=1, devices=2)
    low, high = torch.randn(4, 3), torch.randn(4, 3) * 3 + 10
    a(torch.cat([low, high]))
    b(torch.cat([low * 5 - 2, high]))  # device 0's chunk differs, device 1's is the same
    assert not torch.allclose(a.device_mean[0], a.device_mean[1], atol=1.0)
    torch.testing.assert_close(a.device_mean[1], b.device_mean[1])
    torch.testing.assert_close(a.device_var[1], b.device_var[1])
    assert not torch.allclose(a.device_mean[0], b.device_mean[0])
    shared = MomentumBatchNorm1d(3, total_steps=4, views_per_step=1, devices=2, history="shared")
    shared(torch.cat([low, high]))
    assert shared.device_mean.shape == (1, 3)
    torch.testing.assert_close(shared.running_mean, a.device_mean.mean(0))


def test_unknown_history_is_refused():
    with pytest.raises(ValueError, match="per_device, shared"):
        MomentumBatchNorm2d(3, total_steps=5, history="global")
