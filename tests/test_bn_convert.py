"""convert_bn: every BatchNorm becomes the strategy's layer; eval outputs are unchanged."""

import pytest
import timm
import torch
from torch import nn

from suite.bn import (
    STRATEGIES,
    MomentumBatchNorm1d,
    MomentumBatchNorm2d,
    SplitBatchNorm1d,
    SplitBatchNorm2d,
    SyncBatchNorm1d,
    SyncBatchNorm2d,
    concat_views,
    convert_bn,
)
from suite.cell import STRATEGIES as CELL_STRATEGIES

EXPECTED = {
    "local": (SplitBatchNorm1d, SplitBatchNorm2d),
    "sync": (SyncBatchNorm1d, SyncBatchNorm2d),
    "momentum": (MomentumBatchNorm1d, MomentumBatchNorm2d),
    "shuffle": (SplitBatchNorm1d, SplitBatchNorm2d),
}


def _mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


def _warm(model, x):
    """Give the running buffers non-trivial values so that eval equality means something."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    model.eval()


def _bns(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_registry_matches_the_configuration_names():
    assert tuple(STRATEGIES) == CELL_STRATEGIES


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_convert_timm_resnet18(strategy):
    """resnet18: every BN is the strategy's 2-D layer; eval outputs identical after conversion."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    x = torch.randn(4, 3, 32, 32)
    if strategy != "momentum":
        _warm(model, x)
    model.eval()
    before = model(x)
    n_bn = len(_bns(model))
    convert_bn(model, strategy, devices=2, total_steps=10)
    layers = _bns(model)
    assert len(layers) == n_bn
    assert all(type(m) is EXPECTED[strategy][1] for m in layers)
    torch.testing.assert_close(model(x), before)
    model.train()
    with concat_views(model, 2):
        out = model(torch.cat([x, x]))
    assert out.shape == (8, 512)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_convert_mlp_head(strategy):
    """MLP head: BatchNorm1d becomes the strategy's 1-D layer; eval outputs identical."""
    torch.manual_seed(0)
    head = _mlp()
    x = torch.randn(8, 8)
    if strategy != "momentum":
        _warm(head, x)
    head.eval()
    before = head(x)
    convert_bn(head, strategy, devices=2, total_steps=10)
    assert [type(m) for m in _bns(head)] == [EXPECTED[strategy][0]]
    torch.testing.assert_close(head(x), before)


def test_convert_is_repeatable_between_strategies():
    """local → sync → momentum → local keeps parameters and 1-D/2-D kinds."""
    head = _mlp()
    w = head[1].weight.detach().clone()
    for strategy in ["local", "sync", "momentum", "local"]:
        convert_bn(head, strategy, total_steps=5)
    assert type(head[1]) is SplitBatchNorm1d
    torch.testing.assert_close(head[1].weight, w)


def test_convert_timm_norm_act_layer_keeps_its_activation():
    """timm's BatchNormAct2d (BN + act) keeps the activation: eval outputs identical."""
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0)
    x = torch.randn(2, 3, 64, 64)
    _warm(model, torch.randn(4, 3, 64, 64))
    before = model(x)
    convert_bn(model, "local", devices=2)
    assert all(isinstance(m, SplitBatchNorm2d | SplitBatchNorm1d) for m in _bns(model))
    torch.testing.assert_close(model(x), before)


def test_momentum_conversion_starts_the_schedule_at_zero():
    model = _mlp()
    model(torch.randn(8, 8))  # the plain layer counted one forward
    convert_bn(model, "momentum", total_steps=4)
    assert model[1].step == 0 and model[1].batch_weight == 1.0


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="choose from local, sync, momentum, shuffle"):
        convert_bn(_mlp(), "momentun")


def test_momentum_needs_total_steps():
    with pytest.raises(ValueError, match="total_steps"):
        convert_bn(_mlp(), "momentum")
