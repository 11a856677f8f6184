"""``shuffle`` strategy: ShuffleBN's permutation and its inverse, on one process and on 2 ranks."""

import pytest
import torch
from distributed import run_gloo

from suite.bn import shuffle_batch, unshuffle_batch


def test_unshuffle_of_shuffle_is_identity():
    """unshuffle(shuffle(x)) == x, and the key encoder's output comes back in input order."""
    x = torch.randn(32, 3, 4, 4)
    g = torch.Generator().manual_seed(0)
    xs, handle = shuffle_batch(x, g)
    assert not torch.equal(xs, x)
    torch.testing.assert_close(unshuffle_batch(xs, handle), x)
    f = torch.nn.Conv2d(3, 2, 1)  # a per-sample map commutes with the permutation
    torch.testing.assert_close(unshuffle_batch(f(xs), handle), f(x))


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_device_chunks_hold_other_samples(seed):
    """With D = 4 emulated devices, the shuffled chunks' membership really differs: over the
    batch more than half of the samples land on another device (a uniform permutation moves
    3/4 on average), every chunk holds at least a quarter of foreign samples, and every chunk
    mixes samples of at least 3 of the 4 devices."""
    n, devices = 64, 4
    per = n // devices
    ids = torch.arange(n).float().view(n, 1)
    shuffled, _ = shuffle_batch(ids, torch.Generator().manual_seed(seed))
    assert sorted(shuffled.flatten().tolist()) == ids.flatten().tolist()  # a permutation
    origin = shuffled.flatten().long() // per  # the device each sample came from
    device = torch.arange(n) // per  # the device it is on now
    assert int((origin != device).sum()) > n // 2
    for d in range(devices):
        here = origin[device == d]
        assert int((here != d).sum()) >= per // 4, (d, here.tolist())
        assert len(set(here.tolist())) >= 3, (d, here.tolist())


def test_shuffle_is_deterministic_with_a_generator():
    x = torch.arange(10.0)
    a, _ = shuffle_batch(x, torch.Generator().manual_seed(3))
    b, _ = shuffle_batch(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def _worker(rank, world):
    n = 8
    x = torch.arange(rank * n, (rank + 1) * n).float().view(n, 1) * 1.0
    g = torch.Generator().manual_seed(7)
    xs, handle = shuffle_batch(x, g)
    back = unshuffle_batch(xs * 10, handle)
    return {"x": x, "shuffled": xs, "back": back}


@pytest.mark.distributed
def test_distributed_shuffle_on_two_gloo_ranks(tmp_path):
    """Global permutation across 2 ranks; the inverse returns each rank its own samples."""
    ranks = run_gloo(_worker, 2, tmp_path)
    everything = torch.cat([r["shuffled"] for r in ranks]).flatten().tolist()
    assert sorted(everything) == list(range(16))  # a permutation of the global batch
    crossed = [
        set(r["shuffled"].flatten().tolist()) - set(r["x"].flatten().tolist()) for r in ranks
    ]
    assert all(crossed)  # each rank received samples of the other rank
    for r in ranks:
        torch.testing.assert_close(r["back"], r["x"] * 10)
