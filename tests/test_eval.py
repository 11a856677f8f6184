"""suite.eval: cached features, weighted cosine kNN (InstDisc) and the linear probe."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from suite.eval import (
    extract_features,
    knn_accuracy,
    knn_chunk_size,
    knn_classify,
    knn_scores,
    linear_probe,
    topk_accuracy,
)
from suite.eval.linear import cross_entropy_grad

# -- helpers ------------------------------------------------------------------------------------


def unit(angle_deg: float) -> list[float]:
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def reference_knn_scores(
    train: Tensor, labels: Tensor, test: Tensor, k: int, temperature: float, num_classes: int
) -> Tensor:
    """The InstDisc vote written out: full similarity matrix, a python loop over test rows."""
    train = train / train.norm(dim=1, keepdim=True)
    test = test / test.norm(dim=1, keepdim=True)
    sim = (test @ train.T).tolist()
    scores = [[0.0] * num_classes for _ in sim]
    for i, row in enumerate(sim):
        order = sorted(range(len(row)), key=lambda j: -row[j])
        for j in order[:k]:
            scores[i][int(labels[j])] += math.exp(row[j] / temperature)
    return torch.tensor(scores, dtype=torch.float64)


def random_problem(seed: int = 0, n: int = 300, m: int = 40, d: int = 16, c: int = 7):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g, dtype=torch.float64),
        torch.randint(0, c, (n,), generator=g),
        torch.randn(m, d, generator=g, dtype=torch.float64),
        torch.randint(0, c, (m,), generator=g),
    )


# -- kNN: hand-computed votes -------------------------------------------------------------------


def test_knn_weighting_beats_majority_vote_by_hand():
    """q=(1,0); class 0 at s=1, two class-1 rows at s=0.5, k=3: e^10 > 2·e^5 picks class 0 at
    T=0.1, while at T=100 (weights ≈ 1, a majority vote) class 1 wins."""
    train = torch.tensor([unit(0), unit(60), unit(-60)])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])  # not unit length: the vote must normalise it
    assert knn_classify(train, labels, query, k=3, temperature=0.1).tolist() == [0]
    assert knn_classify(train, labels, query, k=3, temperature=100.0).tolist() == [1]
    scores = knn_scores(train, labels, query, k=3, temperature=0.1)
    ratio = float(scores[0, 0] / scores[0, 1])  # e^(1/0.1) / (2·e^(0.5/0.1))
    assert ratio == pytest.approx(math.exp(5.0) / 2.0, rel=1e-4)


def test_knn_only_top_k_neighbours_vote():
    """T=1: k=1 votes with the nearest row only (class 1 at 10°); with k=4 the three class-0 rows
    at 30°, 35°, 40° outweigh it: e^cos30° + e^cos35° + e^cos40° = 6.8 > e^cos10° = 2.7."""
    train = torch.tensor([unit(10), unit(30), unit(35), unit(40)])
    labels = torch.tensor([1, 0, 0, 0])
    query = torch.tensor([unit(0)])
    assert knn_classify(train, labels, query, k=1, temperature=1.0).tolist() == [1]
    assert knn_classify(train, labels, query, k=4, temperature=1.0).tolist() == [0]


def test_knn_recovers_hand_built_clusters():
    """Three tight clusters around orthogonal axes: every test point gets its cluster's label."""
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(3) * 5.0
    train = centres.repeat_interleave(20, 0) + 0.3 * torch.randn(60, 3, generator=g)
    labels = torch.arange(3).repeat_interleave(20)
    test = centres.repeat_interleave(5, 0) + 0.3 * torch.randn(15, 3, generator=g)
    expected = torch.arange(3).repeat_interleave(5)
    assert torch.equal(knn_classify(train, labels, test, k=10), expected)


def test_knn_tiny_temperature_equals_nearest_neighbour():
    """At T=1e-3, exp(s/T) overflows float32 unless the vote is computed stably; the result is
    the nearest neighbour's label."""
    train, labels, test, _ = random_problem(seed=2)
    train, test = train.float(), test.float()
    nearest = (
        torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    ).argmax(dim=1)
    assert torch.equal(knn_classify(train, labels, test, k=50, temperature=1e-3), labels[nearest])


# -- kNN: equality with the reference and between code paths ------------------------------------


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (5, 0.07), (20, 0.1), (200, 0.5)])
def test_knn_equals_reference_implementation(k, temperature):
    """Predictions equal the loop reference; scores equal its scores times exp(-s_max/T) per row."""
    train, labels, test, _ = random_problem(seed=k)
    expected = reference_knn_scores(train, labels, test, k, temperature, num_classes=7)
    scores = knn_scores(train, labels, test, k=k, temperature=temperature, num_classes=7)
    assert torch.equal(
        knn_classify(train, labels, test, k=k, temperature=temperature), expected.argmax(dim=1)
    )
    top_sim = (
        (torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T)
        .max(dim=1, keepdim=True)
        .values
    )
    torch.testing.assert_close(scores, expected * torch.exp(-top_sim / temperature))


@pytest.mark.parametrize("chunk_size", [1, 7, 40, 1000])
def test_knn_chunked_equals_unchunked(chunk_size):
    """Splitting the test rows into chunks of any size gives the same predictions and scores."""
    train, labels, test, _ = random_problem(seed=3)
    train, test = train.float(), test.float()
    whole = knn_scores(train, labels, test, k=20, chunk_size=test.shape[0])
    chunked = knn_scores(train, labels, test, k=20, chunk_size=chunk_size)
    torch.testing.assert_close(chunked, whole)
    assert torch.equal(
        knn_classify(train, labels, test, k=20, chunk_size=chunk_size), whole.argmax(dim=1)
    )


def test_knn_chunk_size_from_memory_budget():
    """50,000 float32 train rows in a 256 MB block: 1,342 test rows; never below 1."""
    assert knn_chunk_size(50_000, block_bytes=256 * 2**20) == 1342
    assert knn_chunk_size(10**12) == 1


def test_knn_k_larger_than_train_set_is_clipped():
    """k=1000 on 30 train rows votes with all 30 rows, i.e. equals k=30; both k's are recorded."""
    train, labels, test, test_labels = random_problem(seed=4, n=30)
    assert torch.equal(
        knn_classify(train, labels, test, k=1000), knn_classify(train, labels, test, k=30)
    )
    result = knn_accuracy(train, labels, test, test_labels, k=1000)
    assert (result["k"], result["k_effective"], result["num_train"]) == (1000, 30, 30)


def test_knn_runs_on_cpu_tensors_and_returns_long():
    """CPU float32 inputs give an int64 CPU prediction per test row (none for no rows)."""
    train, labels, test, _ = random_problem(seed=5)
    preds = knn_classify(train.float(), labels, test.float(), k=10)
    assert (preds.dtype, preds.device.type, preds.shape) == (torch.long, "cpu", (test.shape[0],))
    assert knn_classify(train, labels, test[:0], k=10).shape == (0,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_cuda_equals_cpu():
    """On CUDA the predictions equal the CPU ones and stay on the GPU."""
    train, labels, test, _ = random_problem(seed=6)
    cpu = knn_classify(train, labels, test, k=20)
    gpu = knn_classify(train.cuda(), labels.cuda(), test.cuda(), k=20)
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)


def test_knn_accuracy_top1_equals_mean_of_correct_predictions():
    """top1 = mean(knn_classify == label); top5 is reported for C >= 5 only; protocol recorded."""
    train, labels, test, test_labels = random_problem(seed=7)
    preds = knn_classify(train, labels, test, k=15, temperature=0.2)
    result = knn_accuracy(train, labels, test, test_labels, k=15, temperature=0.2)
    assert result["top1"] == pytest.approx(float((preds == test_labels).double().mean()))
    assert result["top1"] <= result["top5"] <= 1.0
    assert (result["temperature"], result["num_test"]) == (0.2, test.shape[0])
    two_class = knn_accuracy(train, labels % 2, test, test_labels % 2, k=15)
    assert "top5" not in two_class


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "k: 0"),
        ({"temperature": 0.0}, "temperature"),
        ({"num_classes": 3}, "train_labels: values span 0..6"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_knn_rejects_bad_arguments_by_name(kwargs, match):
    """Bad k / temperature / labels / chunk_size raise ValueError naming the argument."""
    train, labels, test, _ = random_problem(seed=8)
    with pytest.raises(ValueError, match=match):
        knn_classify(train, labels, test, **kwargs)


@pytest.mark.parametrize(
    ("bad", "count"), [(float("nan"), "1 NaN, 0 inf"), (float("inf"), "0 NaN, 1 inf"), (3e19, "")]
)
@pytest.mark.parametrize("which", ["train", "test"])
def test_knn_and_linear_probe_refuse_diverged_features(bad, count, which):
    """One NaN, inf or |x| >= 2**64 entry in the train or test features: knn_accuracy and
    linear_probe raise ValueError naming the argument and the counts instead of scoring."""
    train, labels, test, test_labels = random_problem(seed=9)
    target = train if which == "train" else test
    target[3, 2] = bad
    with pytest.raises(ValueError, match=f"{which}_features: features are not usable") as err:
        knn_accuracy(train, labels, test, test_labels, k=5)
    assert count in str(err.value) and "2**64" in str(err.value)
    with pytest.raises(ValueError, match=f"{which}_x: features are not usable"):
        linear_probe(train, labels, test, test_labels, num_classes=7, epochs=1)


def test_probes_accept_large_but_sane_features():
    """Features scaled by 1e15 (below the 2**64 rule) are still probed: the rule is not a
    tuning knob that rejects unusual but valid scales."""
    train, labels, test, test_labels = random_problem(seed=10)
    scaled = knn_accuracy(train * 1e15, labels, test * 1e15, test_labels, k=5)
    # cosine kNN is scale-invariant: the large features give the unscaled features' accuracy
    assert scaled["top1"] == knn_accuracy(train, labels, test, test_labels, k=5)["top1"]


def test_topk_accuracy_by_hand():
    """Rows: label ranked 1st, 2nd, 3rd → top1 = 1/3, top2 = 2/3, top3 = 1."""
    scores = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    labels = torch.tensor([0, 1, 2])
    acc = topk_accuracy(scores, labels, ks=(1, 2, 3))
    assert acc == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0})
    with pytest.raises(ValueError, match="k=4"):
        topk_accuracy(scores, labels, ks=(4,))


# -- linear probe -------------------------------------------------------------------------------


def separable_problem(seed: int = 0, c: int = 6, d: int = 32, per_class: int = 40):
    """Gaussian blobs with a wide margin, on an uneven per-feature scale and offset."""
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(c, d, generator=g)
    scale = torch.logspace(-2, 2, d)  # features of very different magnitude

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(c).repeat_interleave(n)
        x = centres[y] + 0.5 * torch.randn(c * n, d, generator=g)
        return x * scale + 3.0, y

    return (*draw(per_class), *draw(per_class // 4))


@pytest.mark.parametrize("normalize", ["bn", "standardize"])
def test_linear_probe_separable_features_reach_full_accuracy(normalize):
    """Linearly separable blobs (features on scales 1e-2..1e2): final and best top-1 are 1.0."""
    train_x, train_y, test_x, test_y = separable_problem()
    result = linear_probe(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=6,
        epochs=20,
        batch_size=64,
        normalize=normalize,
    )
    assert result["top1"] == 1.0 and result["best_top1"] == 1.0 and result["top5"] == 1.0
    assert 1 <= result["best_epoch"] <= 20
    assert result["normalize"] == normalize


def test_cross_entropy_grad_equals_autograd():
    """The closed-form gradient of mean cross-entropy equals autograd's, and so does the loss."""
    g = torch.Generator().manual_seed(0)
    h, y = (
        torch.randn(9, 5, generator=g, dtype=torch.float64),
        torch.randint(0, 4, (9,), generator=g),
    )
    weight = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(h @ weight.T + bias, y)
    loss.backward()
    grad_w, grad_b, value = cross_entropy_grad(h, y, weight.detach(), bias.detach())
    torch.testing.assert_close((grad_w, grad_b, value), (weight.grad, bias.grad, loss.detach()))


def test_linear_probe_equals_torch_sgd_reference():
    """Full-batch probe (standardised features, weight decay, momentum, cosine lr) equals
    torch.optim.SGD + autograd from the same seeded init: same last-epoch loss and accuracy."""
    train_x, train_y, test_x, test_y = separable_problem(seed=2, per_class=8)
    train_y = train_y.roll(3)  # not separable any more: the loss stays informative
    epochs, lr, wd, seed = 7, 0.5, 1e-2, 3
    result = linear_probe(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=6,
        epochs=epochs,
        lr=lr,
        batch_size=10_000,
        weight_decay=wd,
        seed=seed,
        normalize="standardize",
    )
    mean, var = train_x.mean(0), train_x.var(0, unbiased=False)
    h = (train_x - mean) / (var + 1e-5).sqrt()
    h_test = (test_x - mean) / (var + 1e-5).sqrt()
    weight = 0.01 * torch.randn(6, 32, generator=torch.Generator().manual_seed(seed))
    weight.requires_grad_(True)
    bias = torch.zeros(6, requires_grad=True)
    opt = torch.optim.SGD([weight, bias], lr=lr, momentum=0.9, weight_decay=wd)
    for step in range(epochs):
        opt.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / epochs))
        loss = torch.nn.functional.cross_entropy(h @ weight.T + bias, train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = topk_accuracy((h_test @ weight.T + bias).detach(), test_y, ks=(1, 5))
    assert result["train_loss"] == pytest.approx(loss.item(), rel=1e-4)
    assert (result["top1"], result["top5"]) == (accuracy[1], accuracy[5])


def test_linear_probe_is_deterministic_given_seed():
    """The same seed gives an identical result (loss to the last bit); another seed differs;
    the caller's CPU thread count is left as it was."""
    train_x, train_y, test_x, test_y = separable_problem(seed=1)
    train_y = train_y[torch.randperm(train_y.shape[0], generator=torch.Generator().manual_seed(0))]

    def run(seed: int) -> dict:
        return linear_probe(
            train_x, train_y, test_x, test_y, num_classes=6, epochs=5, seed=seed, batch_size=50
        )

    threads = torch.get_num_threads()
    first, again, other = run(0), run(0), run(1)
    assert torch.get_num_threads() == threads  # the probe's single-thread setting is restored
    assert first == again
    assert first["train_loss"] != other["train_loss"]


def test_linear_probe_bn_handles_batches_of_one_and_full_batch():
    """BN never sees a 1-row batch (3 rows, batch_size 2); batch_size >= N is full-batch."""
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9]])
    y = torch.tensor([0, 1, 0])
    small = linear_probe(x, y, x, y, num_classes=2, epochs=3, batch_size=2)
    full = linear_probe(x, y, x, y, num_classes=2, epochs=3, batch_size=1000)
    assert "top5" not in small and 0.0 <= small["top1"] <= 1.0
    assert 0.0 <= full["top1"] <= 1.0


def test_linear_probe_rejects_unknown_normalization():
    """normalize='layer' raises ValueError listing the valid choices."""
    train_x, train_y, test_x, test_y = separable_problem()
    with pytest.raises(ValueError, match="normalize: 'layer'.*'bn', 'standardize', None"):
        linear_probe(train_x, train_y, test_x, test_y, num_classes=6, normalize="layer")


# -- extract_features ---------------------------------------------------------------------------


class Recorder(nn.Module):
    """Flatten + BN + a double-precision linear map; records the training flag it ran with."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.head = nn.Linear(4, 3).double()
        self.seen: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(self.training)
        return self.head(self.bn(x).flatten(1).double())


def image_batches(n_batches: int = 3, size: int = 4):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(size, 1, 2, 2, generator=g), torch.arange(i * size, (i + 1) * size).int())
        for i in range(n_batches)
    ]


def test_extract_features_runs_in_eval_and_restores_mixed_modes():
    """Forward runs in eval mode; afterwards the root is in train mode and the BN still in eval."""
    encoder = Recorder()
    encoder.bn.eval()
    before = [m.training for m in encoder.modules()]
    extract_features(encoder, image_batches())
    assert encoder.seen == [False, False, False]
    assert [m.training for m in encoder.modules()] == before
    assert encoder.training and not encoder.bn.training


def test_extract_features_restores_mode_when_encoder_raises():
    """An exception inside the encoder still leaves it in its previous (train) mode."""
    encoder = nn.Sequential(nn.Linear(4, 2))

    with pytest.raises(RuntimeError):
        extract_features(encoder, [(torch.randn(2, 5), torch.zeros(2))])
    assert encoder.training


def test_extract_features_float32_cpu_in_order():
    """Features are float32 on CPU in batch order (equal to the eval-mode forward of the
    concatenated inputs); labels int64 in order; BN uses running statistics."""
    encoder = Recorder()
    encoder.bn.running_mean.fill_(0.5)
    batches = image_batches()
    features, labels = extract_features(encoder, batches)
    encoder.eval()
    with torch.no_grad():
        expected = encoder(torch.cat([x for x, _ in batches])).float()
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    assert labels.dtype == torch.long and labels.tolist() == list(range(12))
    assert torch.equal(features, expected)


def test_extract_features_autocast_and_channels_last_still_float32():
    """bf16 autocast and channels_last inputs still give float32 [N, D] features."""
    encoder = nn.Sequential(nn.Conv2d(1, 3, 1), nn.AdaptiveAvgPool2d(1))
    features, labels = extract_features(
        encoder, image_batches(), channels_last=True, autocast_dtype=torch.bfloat16
    )
    assert features.shape == (12, 3) and features.dtype == torch.float32
    assert labels.shape == (12,)


def test_extract_features_rejects_empty_and_malformed_batches():
    """No batches, or an item that is not a pair, raise ValueError naming `batches`."""
    with pytest.raises(ValueError, match="batches: no batches"):
        extract_features(nn.Identity(), [])
    with pytest.raises(ValueError, match="batches: item 0"):
        extract_features(nn.Identity(), [torch.randn(2, 3)])


def test_calibrate_bn_sets_running_stats_to_the_data_average_and_keeps_weights():
    from suite.probe import calibrate_bn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k}
    batches = [(torch.randn(8, 3, 6, 6) * 3 + 1, None) for _ in range(3)]
    calibrate_bn(net, batches, torch.device("cpu"), False, None)
    acts = torch.cat([net[0](x) for x, _ in batches])  # the first BN's input, all batches
    per_batch_var = torch.stack([net[0](x).var(dim=(0, 2, 3)) for x, _ in batches])
    assert torch.allclose(net[1].running_mean, acts.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(net[1].running_var, per_batch_var.mean(0), atol=1e-4)
    assert net[1].num_batches_tracked == 3 and net[1].momentum == 0.1 and not net.training
    for k, v in weights.items():
        if "num_batches" not in k:
            assert torch.equal(net.state_dict()[k], v), k
