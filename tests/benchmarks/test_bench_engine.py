"""One training step of the suite's methods against the references a user would otherwise pick.

Run:  pytest tests/benchmarks/test_bench_engine.py --benchmark-only --benchmark-group-by=group

Each group times, in one run on one machine, on synthetic tensors (no data loading):
* ``byol``: the suite's BYOL (local BN, one device) vs the same BYOL built from the peer library
  lightly (its heads, ``NegativeCosineSimilarity`` loss and ``update_momentum``; timm's
  resnet18 as timm builds it, 512→4096→256 dims) — goal: ours ≤ 0.9× lightly at 32, 64, 96 px;
* ``byol`` also holds a supervised step of the same backbone on the same 2B images — goal: BYOL
  ≤ 1.5× supervised (the floor is ≈ 1.33: one more, gradient-free, forward);
* ``teacher``: M2T with a MomentumBN teacher vs a local-BN teacher — goal: ≤ 1.03×.
Ratios are read from the group's table (the medians of one run).
"""

import copy

import pytest
import timm
import torch

from suite.bench import bench_cell
from suite.methods import build_method
from suite.models import build_backbone

SIZES = [32, 64, 96]
BATCH = 64


def _views(size):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(BATCH, 3, size, size, generator=g),
        torch.randn(BATCH, 3, size, size, generator=g),
    )


def _suite_step(cell, fuse_views=True):
    method = build_method(cell, total_steps=10**6, num_ssl_samples=10**6).train()
    method.fuse_views = fuse_views
    opt = torch.optim.SGD(method.student_parameters(), lr=0.01, momentum=0.9)
    v1, v2 = _views(cell.dataset.image_size)
    state = {"k": 0}

    def step():
        loss, _ = method.training_step(v1, v2, state["k"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["k"] += 1

    return step


def _lightly_step(size):
    lightly_modules = pytest.importorskip("lightly.models.modules")
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    # the backbone as a lightly user builds it: timm's resnet18 (build_backbone's model, without
    # the suite's own CPU layer choices: its channels-last stem and max pool)
    backbone = timm.create_model("resnet18", pretrained=False, num_classes=0)
    dim = backbone.num_features
    projector = lightly_modules.BYOLProjectionHead(dim, 4096, 256)
    predictor = lightly_modules.BYOLPredictionHead(256, 4096, 256)
    backbone_t, projector_t = copy.deepcopy(backbone), copy.deepcopy(projector)
    deactivate_requires_grad(backbone_t)
    deactivate_requires_grad(projector_t)
    criterion = NegativeCosineSimilarity()
    params = [*backbone.parameters(), *projector.parameters(), *predictor.parameters()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    v1, v2 = _views(size)

    def step():
        update_momentum(backbone, backbone_t, 0.99)
        update_momentum(projector, projector_t, 0.99)
        p1 = predictor(projector(backbone(v1)))
        p2 = predictor(projector(backbone(v2)))
        with torch.no_grad():
            z1 = projector_t(backbone_t(v1))
            z2 = projector_t(backbone_t(v2))
        loss = 0.5 * (criterion(p1, z2) + criterion(p2, z1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _supervised_step(size):
    backbone, dim = build_backbone("resnet18", image_size=size, cifar_stem=False)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(dim, 1000))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2 * BATCH, 3, size, size)
    y = torch.randint(0, 1000, (2 * BATCH,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _cell(method, size, teacher_bn=None):
    cell = bench_cell(method, "resnet18", size, BATCH, "local", teacher_bn, 1)
    return cell.replace(cifar_stem=False)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", ["suite", "lightly", "supervised_2B"])
def test_byol_step(benchmark, impl, size):
    benchmark.group = f"byol step, resnet18, batch {BATCH}, {size}px"
    torch.manual_seed(0)
    if impl == "suite":
        step = _suite_step(_cell("byol", size))
    elif impl == "lightly":
        step = _lightly_step(size)
    else:
        step = _supervised_step(size)
    benchmark.pedantic(step, rounds=5, warmup_rounds=2, iterations=1)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("teacher_bn", ["local", "momentum"])
def test_teacher_bn_step(benchmark, teacher_bn, size):
    benchmark.group = f"m2t step by teacher BN, resnet18, batch {BATCH}, {size}px"
    torch.manual_seed(0)
    step = _suite_step(_cell("m2t", size, teacher_bn))
    benchmark.pedantic(step, rounds=5, warmup_rounds=2, iterations=1)
