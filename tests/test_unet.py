"""The restoration network: the paper's size, any image size, bf16, no graph breaks."""
import pytest
import torch

import unet


def test_paper_preset_parameter_count():
    n = unet.count_parameters(unet.build(3, "paper"))
    assert 56.0e6 < n < 57.5e6  # the released network: ~56.6 M for RGB


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (1, 3, 17, 40), (2, 3, 5, 7)])
def test_any_size_and_bf16(shape):
    net = unet.build(shape[1], "tiny")
    x, t = torch.randn(*shape), torch.tensor([1, 7])[: shape[0]]
    y = net(x, t)
    assert y.shape == x.shape and torch.isfinite(y).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = net(x, t)
    assert yb.dtype == torch.bfloat16 and (yb.float() - y).abs().max() < 0.2


def test_time_conditioning_matters():
    net = unet.build(1, "tiny")
    x = torch.randn(1, 1, 16, 16)
    assert (net(x, torch.tensor([1])) - net(x, torch.tensor([50]))).abs().max() > 1e-4


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 3, 28, 30)])
def test_compiles_without_graph_breaks(shape):
    explanation = torch._dynamo.explain(unet.build(3, "small"))(torch.randn(*shape), torch.tensor([1, 5]))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
