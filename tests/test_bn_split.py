"""``local`` strategy: split BN over D emulated devices equals F.batch_norm on each chunk."""

import pytest
import torch
import torch.nn.functional as F

from suite.bn import SplitBatchNorm1d, SplitBatchNorm2d, concat_views


def _reference(x, weight, bias, devices, running_means, running_vars, momentum=0.1, eps=1e-5):
    """D independent devices: plain train-mode BN on each contiguous chunk with its own buffers."""
    outs = []
    for d, chunk in enumerate(x.chunk(devices)):
        outs.append(
            F.batch_norm(
                chunk, running_means[d], running_vars[d], weight, bias, True, momentum, eps
            )
        )
    return torch.cat(outs)


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(16, 6, 5, 5), (16, 6), (16, 6, 7)])
def test_split_equals_batch_norm_on_each_chunk(devices, shape):
    """Split BN over D devices == BN on each chunk of N/D: outputs, gradients; running stats are
    device 0's."""
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    cls = SplitBatchNorm2d if len(shape) == 4 else SplitBatchNorm1d
    bn = cls(shape[1], devices)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    w = bn.weight.detach().clone().requires_grad_()
    b = bn.bias.detach().clone().requires_grad_()
    rm = [torch.zeros(shape[1]) for _ in range(devices)]
    rv = [torch.ones(shape[1]) for _ in range(devices)]
    g = torch.randn(*shape)

    xa = x.clone().requires_grad_()
    ya = bn(xa)
    (ya * g).sum().backward()
    ya = ya.detach()
    xb = x.clone().requires_grad_()
    ref = _reference(xb, w, b, devices, rm, rv)
    (ref * g).sum().backward()

    torch.testing.assert_close(ya, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.weight.grad, w.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.bias.grad, b.grad, rtol=1e-4, atol=1e-4)
    # eval running stats = device 0's buffers (what DDP rank 0 holds and checkpoints)
    torch.testing.assert_close(bn.running_mean, rm[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, rv[0], rtol=1e-5, atol=1e-6)
    if devices > 1:  # and not the average over devices, which no D-GPU run holds
        assert not torch.allclose(bn.running_mean, torch.stack(rm).mean(0), atol=1e-3)


def test_split_chunks_are_contiguous_not_strided():
    """Device d sees samples [d·N/D, (d+1)·N/D): a constant-per-chunk input normalises to 0."""
    x = torch.cat([torch.full((4, 3, 2, 2), float(v)) for v in range(4)])
    x = x + torch.randn_like(x) * 1e-3
    bn = SplitBatchNorm2d(3, devices=4, affine=False)
    y = bn(x)
    # Each chunk's mean is removed; with strided groups the chunk means would survive.
    assert y.view(4, 4, 3, 2, 2).mean(dim=(1, 3, 4)).abs().max() < 1e-4


def test_split_eval_uses_running_stats():
    """Eval mode == F.batch_norm with the running buffers."""
    bn = SplitBatchNorm2d(3, devices=2)
    for _ in range(3):
        bn(torch.randn(8, 3, 4, 4) * 2 + 1)
    bn.eval()
    x = torch.randn(8, 3, 4, 4)
    ref = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    torch.testing.assert_close(bn(x), ref)


def test_split_indivisible_batch_is_an_error():
    """N not divisible by D is an error that says so."""
    bn = SplitBatchNorm2d(3, devices=4)
    with pytest.raises(ValueError, match="not divisible by devices=4"):
        bn(torch.randn(10, 3, 2, 2))


@pytest.mark.parametrize("devices", [1, 4])
def test_concat_views_equals_separate_forwards(devices):
    """cat([v1, v2]) under concat_views(·, 2) == two forwards: outputs, grads, running stats."""
    torch.manual_seed(1)
    v1, v2 = torch.randn(8, 5, 3, 3), torch.randn(8, 5, 3, 3) * 2
    a, b = SplitBatchNorm2d(5, devices), SplitBatchNorm2d(5, devices)
    b.load_state_dict(a.state_dict())
    g = torch.randn(16, 5, 3, 3)
    x1, x2 = v1.clone().requires_grad_(), v2.clone().requires_grad_()
    sep = torch.cat([a(x1), a(x2)])
    (sep * g).sum().backward()
    xc = torch.cat([v1, v2]).requires_grad_()
    with concat_views(b, 2):
        fused = b(xc)
    (fused * g).sum().backward()
    torch.testing.assert_close(fused, sep, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xc.grad, torch.cat([x1.grad, x2.grad]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.weight.grad, a.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.running_mean, a.running_mean)
    torch.testing.assert_close(b.running_var, a.running_var)
    assert b.views == 1  # restored


def test_concat_views_refuses_plain_batchnorm():
    """A plain nn.BatchNorm would mix the views: concat_views says so."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="mix"), concat_views(model, 2):
        pass


def test_split_channels_last_and_cumulative_momentum():
    """channels_last gives the same result; momentum=None is nn.BatchNorm's cumulative mean."""
    x = torch.randn(8, 4, 3, 3)
    a = SplitBatchNorm2d(4, 2, momentum=None)
    b = SplitBatchNorm2d(4, 2, momentum=None)
    ya = a(x)
    yb = b(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(ya, yb)
    x2 = torch.randn(8, 4, 3, 3) + 3
    a(x2)
    m1 = x.chunk(2)[0].mean(dim=(0, 2, 3))  # device 0's chunk of each step
    m2 = x2.chunk(2)[0].mean(dim=(0, 2, 3))
    torch.testing.assert_close(a.running_mean, (m1 + m2) / 2, rtol=1e-5, atol=1e-5)


def test_float64_input_is_computed_in_float64():
    """No silent float32: float64 split BN equals float64 F.batch_norm per chunk to 1e-12."""
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    bn = SplitBatchNorm2d(3, devices=2).double()
    ref = torch.cat([F.batch_norm(c, None, None, bn.weight, bn.bias, True) for c in x.chunk(2)])
    y = bn(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [3, 12])
@pytest.mark.parametrize("grad", [True, False])
def test_native_per_chunk_and_grouped_implementations_both_equal_bn_on_each_chunk(groups, grad):
    """The two computations behind split BN (torch's kernel per chunk, written into one output,
    up to PER_CHUNK_MAX_GROUPS groups; the grouped closed form beyond) each equal F.batch_norm on
    every chunk: outputs, statistics, and with gradients the input, weight and bias gradients."""
    from suite.bn.functional import chunked_batch_norm, group_batch_norm

    torch.manual_seed(3)
    x = torch.randn(24, 5, 3, 3) * 2 + 1
    w = torch.rand(5) + 0.5
    b = torch.rand(5) - 0.5
    g = torch.randn_like(x)
    results = {}
    for name, fn in (("chunked", chunked_batch_norm), ("grouped", group_batch_norm)):
        xa, wa, ba = (t.clone().requires_grad_(grad) for t in (x, w, b))
        with torch.set_grad_enabled(grad):
            y, mean, var, count = fn(xa, wa, ba, groups, 1e-5)
        assert count == x.numel() // (5 * groups)
        if grad:
            (y * g).sum().backward()
        results[name] = (y.detach(), mean, var, xa.grad, wa.grad, ba.grad)
    xr, wr, br = (t.clone().requires_grad_(grad) for t in (x, w, b))
    with torch.set_grad_enabled(grad):
        ref = torch.cat([F.batch_norm(c, None, None, wr, br, True) for c in xr.chunk(groups)])
    if grad:
        (ref * g).sum().backward()
    chunks = x.chunk(groups)
    ref_mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks])
    ref_var = torch.stack([c.var(dim=(0, 2, 3), unbiased=False) for c in chunks])
    for name, (y, mean, var, gx, gw, gb) in results.items():
        torch.testing.assert_close(y, ref.detach(), rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(var, ref_var, rtol=1e-4, atol=1e-5, msg=name)
        assert not mean.requires_grad and not var.requires_grad
        if grad:
            torch.testing.assert_close(gx, xr.grad, rtol=1e-4, atol=1e-5, msg=name)
            torch.testing.assert_close(gw, wr.grad, rtol=1e-4, atol=1e-4, msg=name)
            torch.testing.assert_close(gb, br.grad, rtol=1e-4, atol=1e-4, msg=name)
        else:
            assert gx is None and gw is None and gb is None
