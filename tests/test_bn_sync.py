"""``sync`` strategy: our cross-process BN on 2 gloo processes == plain BN on the whole batch."""

import pytest
import torch
from distributed import run_gloo

from suite.bn import SyncBatchNorm1d, SyncBatchNorm2d, concat_views

pytestmark = pytest.mark.distributed

SHAPES = {"2d": (16, 6, 5, 5), "1d": (16, 6)}


def _data(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 2 + 0.5
    dy = torch.randn(*shape, generator=g)
    w = torch.rand(shape[1], generator=g) + 0.5
    b = torch.rand(shape[1], generator=g) - 0.5
    return x, dy, w, b


def _layer(kind, w, b):
    bn = (SyncBatchNorm2d if kind == "2d" else SyncBatchNorm1d)(w.numel())
    with torch.no_grad():
        bn.weight.copy_(w)
        bn.bias.copy_(b)
    return bn


def _worker(rank, world, kind, views):
    x, dy, w, b = _data(SHAPES[kind])
    n = x.shape[0] // world
    bn = _layer(kind, w, b)
    if views == 1:
        mine, dmine = x[rank * n : (rank + 1) * n], dy[rank * n : (rank + 1) * n]
    else:  # each rank holds its half of view 1 followed by its half of view 2
        half = x.shape[0] // 2
        per = half // world
        idx = torch.cat(
            [torch.arange(v * half + rank * per, v * half + (rank + 1) * per) for v in range(2)]
        )
        mine, dmine = x[idx], dy[idx]
    xr = mine.clone().requires_grad_()
    with concat_views(bn, views):
        y = bn(xr)
    (y * dmine).sum().backward()
    return {
        "y": y.detach(),
        "grad": xr.grad,
        "gw": bn.weight.grad,
        "gb": bn.bias.grad,
        "rm": bn.running_mean,
        "rv": bn.running_var,
    }


def _all_cases(rank, world):
    cases = [("2d", 1), ("1d", 1), ("2d", 2)]
    return {case: _worker(rank, world, *case) for case in cases}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """One spawn of 2 gloo processes computes every case (process start-up dominates)."""
    return run_gloo(_all_cases, 2, tmp_path_factory.mktemp("sync"))


def _reference(kind, x, dy, w, b):
    bn = torch.nn.BatchNorm2d(w.numel()) if kind == "2d" else torch.nn.BatchNorm1d(w.numel())
    with torch.no_grad():
        bn.weight.copy_(w)
        bn.bias.copy_(b)
    xr = x.clone().requires_grad_()
    y = bn(xr)
    (y * dy).sum().backward()
    return y.detach(), xr.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_sync_on_two_gloo_processes_equals_bn_on_concatenated_batch(kind, ranks):
    """2 ranks × 8 samples == one nn.BatchNorm over 16: outputs, x/weight/bias grads, buffers."""
    ranks = [r[(kind, 1)] for r in ranks]
    x, dy, w, b = _data(SHAPES[kind])
    y, gx, gw, gb, rm, rv = _reference(kind, x, dy, w, b)
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y, **tol)
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]), gx, **tol)
    # each rank holds the gradient of its own samples; DDP sums/averages them across ranks
    torch.testing.assert_close(sum(r["gw"] for r in ranks), gw, **tol)
    torch.testing.assert_close(sum(r["gb"] for r in ranks), gb, **tol)
    for r in ranks:  # every rank's running stats are the global batch's
        torch.testing.assert_close(r["rm"], rm, **tol)
        torch.testing.assert_close(r["rv"], rv, **tol)


def test_sync_with_two_views_per_forward_keeps_views_apart(ranks):
    """Views concatenated on 2 ranks == plain BN on each whole view separately (one nn.BatchNorm
    forwarded on view 1, then on view 2): outputs, input gradients, weight/bias gradients (summed
    over ranks, as DDP does) and the running statistics after both views' updates."""
    ranks = [r[("2d", 2)] for r in ranks]
    x, dy, w, b = _data(SHAPES["2d"])
    half, per = 8, 4
    bn = torch.nn.BatchNorm2d(w.numel())
    with torch.no_grad():
        bn.weight.copy_(w)
        bn.bias.copy_(b)
    xr = x.clone().requires_grad_()
    y_ref = [bn(xr[v * half : (v + 1) * half]) for v in range(2)]
    (torch.cat(y_ref) * dy).sum().backward()
    tol = {"rtol": 1e-5, "atol": 1e-5}
    for rank, r in enumerate(ranks):
        mine = [slice(v * half + rank * per, v * half + (rank + 1) * per) for v in range(2)]
        want = torch.cat([y_ref[v][rank * per : (rank + 1) * per] for v in range(2)])
        torch.testing.assert_close(r["y"], want.detach(), **tol)
        torch.testing.assert_close(r["grad"], torch.cat([xr.grad[s] for s in mine]), **tol)
        torch.testing.assert_close(r["rm"], bn.running_mean, **tol)
        torch.testing.assert_close(r["rv"], bn.running_var, **tol)
    torch.testing.assert_close(sum(r["gw"] for r in ranks), bn.weight.grad, **tol)
    torch.testing.assert_close(sum(r["gb"] for r in ranks), bn.bias.grad, **tol)


def test_sync_outside_a_process_group_is_plain_batchnorm():
    """No process group: plain BN over the local batch (= SyncBN over D emulated devices)."""
    x, dy, w, b = _data(SHAPES["2d"])
    bn = _layer("2d", w, b)
    y_ref, *_ = _reference("2d", x, dy, w, b)
    torch.testing.assert_close(bn(x), y_ref)
