"""suite.eval: cached features, weighted cosine kNN (InstDisc) and the linear probe."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from suite.eval import (
    DEFAULT_BLOCK_BYTES,
    extract_features,
    knn_accuracy,
    knn_chunk_size,
    knn_classify,
    knn_scores,
    linear_probe,
    topk_accuracy,
    topk_correct,
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
    # a BN over a single row would divide by a zero variance: the loss would not be finite
    assert "top5" not in small and math.isfinite(small["train_loss"])
    assert math.isfinite(full["train_loss"])
    for result in (small, full):  # an accuracy over 3 test rows
        assert result["top1"] * 3 == pytest.approx(round(result["top1"] * 3))


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


def test_extract_features_gathers_where_asked_and_tells_a_placement_the_width():
    """out_device as a function is called once with the feature width D and decides where the
    features go; num_rows preallocates the output, with the same result as concatenation, and a
    different row count is an error."""
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    widths = []

    def place(dim: int) -> torch.device:
        widths.append(dim)
        return torch.device("cpu")

    concatenated = extract_features(encoder, image_batches())
    placed = extract_features(encoder, image_batches(), out_device=place, num_rows=12)
    assert widths == [3]
    assert torch.equal(placed[0], concatenated[0]) and torch.equal(placed[1], concatenated[1])
    with pytest.raises(ValueError, match="yielded 12 rows, expected num_rows=13"):
        extract_features(encoder, image_batches(), num_rows=13)
    with pytest.raises(ValueError, match="more than num_rows=11"):
        extract_features(encoder, image_batches(), num_rows=11)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_extract_features_on_cuda_stay_on_the_gpu_unless_gathered_on_the_cpu():
    """A CUDA encoder's features and labels stay on the GPU by default; out_device='cpu' gives
    the same values in pinned host memory."""
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).cuda()
    on_gpu = extract_features(encoder, image_batches(), num_rows=12)
    on_cpu = extract_features(encoder, image_batches(), out_device="cpu", num_rows=12)
    assert on_gpu[0].is_cuda and on_gpu[1].is_cuda
    assert on_cpu[0].device.type == "cpu" and on_cpu[0].is_pinned()
    assert torch.equal(on_gpu[0].cpu(), on_cpu[0]) and torch.equal(on_gpu[1].cpu(), on_cpu[1])


# -- threads and placement ----------------------------------------------------------------------


def test_topk_hits_count_on_the_scores_device_like_topk_correct():
    """topk_hits is topk_correct as an int64 tensor on the scores' device (summed over chunks
    without reading the host); both equal a count written out per row."""
    from suite.eval import topk_hits

    g = torch.Generator().manual_seed(0)
    scores, labels = torch.randn(60, 7, generator=g), torch.randint(0, 7, (60,), generator=g)
    ranked = scores.argsort(dim=1, descending=True).tolist()
    by_hand = [sum(int(labels[i]) in ranked[i][:k] for i in range(60)) for k in (1, 3, 5)]
    hits = topk_hits(scores, labels, (1, 3, 5))
    assert hits.dtype == torch.long and hits.device == scores.device
    assert hits.tolist() == by_hand == list(topk_correct(scores, labels, (1, 3, 5)).values())


def _threads_seen(step: str, threads: int, monkeypatch) -> list[int]:
    """Run one evaluation step with cpu_threads=threads; the thread counts seen where it works."""
    import suite.eval.knn as knn_module
    import suite.eval.linear as linear_module

    seen: list[int] = []
    train_x, train_y, test_x, test_y = separable_problem()
    if step == "extract":

        class Probe(nn.Module):
            def forward(self, x):
                seen.append(torch.get_num_threads())
                return x.flatten(1)

        extract_features(Probe(), image_batches(), cpu_threads=threads)
    elif step == "knn":
        inner = knn_module._iter_scores

        def spy(*args, **kwargs):
            seen.append(torch.get_num_threads())
            yield from inner(*args, **kwargs)

        monkeypatch.setattr(knn_module, "_iter_scores", spy)
        knn_accuracy(train_x, train_y, test_x, test_y, k=5, cpu_threads=threads)
    else:
        inner = linear_module._fit_and_score

        def spy(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return inner(*args, **kwargs)

        monkeypatch.setattr(linear_module, "_fit_and_score", spy)
        linear_probe(train_x, train_y, test_x, test_y, num_classes=6, epochs=1, cpu_threads=threads)
    return seen


@pytest.mark.parametrize("step", ["extract", "knn", "linear"])
def test_each_evaluation_step_runs_with_its_cpu_threads_and_restores_the_callers(step, monkeypatch):
    """extract_features, knn_accuracy and linear_probe take cpu_threads alike: the work runs with
    that many intra-op threads, and the caller's count is back afterwards."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        seen = _threads_seen(step, 3, monkeypatch)
        assert seen and set(seen) == {3}
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_features_stay_on_the_gpu_when_they_fit_else_go_to_the_cpu_with_the_numbers():
    """plan_features: the estimated working set (both splits' features, kNN's normalised train
    copy, one kNN block) within 90 % of the GPU's free memory keeps them on the GPU; more moves
    them to the CPU with a reason naming the sizes; a CPU cell's features are on its own device."""
    from suite.eval import plan_features
    from suite.eval.placement import working_set_bytes

    n, m, d = 10_000, 2_000, 512
    need = working_set_bytes(n, m, d)
    assert need == 4 * d * (n + m) + 4 * d * n + DEFAULT_BLOCK_BYTES
    fits = plan_features("cuda", n, m, d, free_bytes=need * 2)
    assert fits.device == torch.device("cuda") and fits.on_cell_device and fits.bytes == need
    tight = plan_features("cuda:1", n, m, d, free_bytes=need)  # 90 % of it is too little
    assert tight.device == torch.device("cpu") and not tight.on_cell_device
    assert tight.reason.startswith("on the CPU, not cuda:1")
    assert f"{need / 2**30:.2f} GiB" in tight.reason and "90%" in tight.reason
    cpu = plan_features("cpu", n, m, d)
    assert cpu.device == torch.device("cpu") and cpu.on_cell_device and cpu.free_bytes is None


# -- the augmented linear probe -----------------------------------------------------------------


def digits(batch_size: int = 64):
    from suite.data import build_data

    return build_data(
        "digits", root=None, image_size=16, aug="byol", batch_size=batch_size, device="cpu",
        num_workers=0,
    )  # fmt: skip


def conv_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
    )


def test_augmented_probe_learns_digits_above_chance_through_a_frozen_encoder():
    """Digits (10 classes, chance 0.1) through a frozen encoder (8×8 pooling + BN with
    calibrated statistics): the classifier trained on RandomResizedCrop views for 4 epochs
    reaches >= 0.3 top-1 on the centre-resized test images (0.41-0.49 over seeds 0-2), while the
    encoder's BN buffers are bit-identical afterwards and its train flag restored."""
    from suite.eval import linear_probe_augmented
    from suite.probe import calibrate_bn

    data = digits()
    encoder = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.BatchNorm2d(3), nn.Flatten())
    calibrate_bn(encoder, data.eval_batches("train", 256), torch.device("cpu"), False, None)
    encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    test_x, test_y = extract_features(encoder, data.eval_batches("test", 256))
    result = linear_probe_augmented(
        encoder,
        lambda epoch: data.linear_epoch(epoch, 128),
        test_x,
        test_y,
        num_classes=10,
        steps_per_epoch=data.linear_steps(128),
        epochs=4,
        lr=0.5,
        cpu_threads=1,  # small steps: threads only add synchronisation
    )
    assert result["top1"] >= 0.3 and result["best_top1"] >= result["top1"]
    assert result["protocol"] == "augmented" and result["head"] == "linear+bn"
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert encoder.training


def test_augmented_probe_trains_on_each_epochs_batches_and_never_runs_the_test_images():
    """The encoder sees exactly the batches train_epoch yields for epochs 0, 1, … in eval mode,
    epochs × steps forwards in all: the test images are scored from their cached features."""
    from suite.eval import linear_probe_augmented

    data = digits()
    seen: list[tuple[Tensor, bool]] = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = conv_encoder()

        def forward(self, x):
            seen.append((x, self.training))
            return self.net(x)

    encoder = Spy()
    test_x, test_y = extract_features(encoder, data.eval_batches("test", 512))
    seen.clear()
    steps = data.linear_steps(512)
    linear_probe_augmented(
        encoder, lambda e: data.linear_epoch(e, 512), test_x, test_y, num_classes=10,
        steps_per_epoch=steps, epochs=2, cpu_threads=1,
    )  # fmt: skip
    expected = [x for e in (0, 1) for x, _ in data.linear_epoch(e, 512)]
    assert len(seen) == len(expected) == 2 * steps
    pairs = zip(seen, expected, strict=True)
    assert all(torch.equal(x, want) and not training for (x, training), want in pairs)


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_augmented_probe_separates_blobs_deterministically_with_either_schedule(schedule):
    """Linearly separable blobs as 'images' of an identity encoder: top-1 1.0 with the cosine or
    the step schedule, the same result twice for one seed, and another loss for another."""
    from suite.eval import linear_probe_augmented

    train_x, train_y, test_x, test_y = separable_problem()

    def epoch(e: int):
        order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(e))
        return [(train_x[i], train_y[i]) for i in torch.tensor_split(order, 4)]

    def run(seed: int) -> dict:
        return linear_probe_augmented(
            nn.Identity(), epoch, test_x, test_y, num_classes=6, steps_per_epoch=4, epochs=12,
            lr=0.5, schedule=schedule, milestones=(8, 10), seed=seed, device="cpu", cpu_threads=1,
        )  # fmt: skip

    first = run(0)
    assert first["top1"] == first["best_top1"] == 1.0 and first["schedule"] == schedule
    assert first == run(0)
    assert first["train_loss"] != run(1)["train_loss"]


def test_lr_at_is_cosine_per_iteration_or_step_decay_at_the_milestone_epochs():
    from suite.eval.augmented import lr_at

    cos = {"lr": 0.2, "total_steps": 100, "steps_per_epoch": 10, "schedule": "cosine"}
    assert lr_at(0, milestones=(), **cos) == pytest.approx(0.2)
    assert lr_at(50, milestones=(), **cos) == pytest.approx(0.1)
    assert lr_at(75, milestones=(), **cos) == pytest.approx(0.1 * (1 + math.cos(0.75 * math.pi)))
    step = {**cos, "lr": 30.0, "schedule": "step"}
    lrs = [lr_at(s, milestones=(6, 8), **step) for s in (0, 59, 60, 79, 80, 99)]
    assert lrs == pytest.approx([30.0, 30.0, 3.0, 3.0, 0.3, 0.3])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "linear"}, "schedule: 'linear'; valid choices are cosine, step"),
        ({"schedule": "step", "milestones": (0, 3)}, r"milestones: \[0, 3\]; expected epochs"),
        ({"steps_per_epoch": 5}, "epoch 0 yielded 4 batches, expected steps_per_epoch=5"),
        ({"steps_per_epoch": 3}, "epoch 0 yielded more than steps_per_epoch=3 batches"),
        ({"epochs": 0}, "epochs: 0; expected >= 1"),
    ],
)
def test_augmented_probe_rejects_bad_arguments_by_name(kwargs, match):
    from suite.eval import linear_probe_augmented

    train_x, train_y, test_x, test_y = separable_problem()
    batches = list(zip(torch.tensor_split(train_x, 4), torch.tensor_split(train_y, 4), strict=True))
    args = {"num_classes": 6, "steps_per_epoch": 4, "epochs": 2, "device": "cpu"} | kwargs
    with pytest.raises(ValueError, match=match):
        linear_probe_augmented(nn.Identity(), lambda e: batches, test_x, test_y, **args)
