"""EAR's MNIST attention classifier: the paper's architecture, a proper spatial softmax, any size."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from defectkit.errors import ConfigError
from defectkit.models import (
    AttentionConfig,
    AttentionNet,
    count_parameters,
    create_model,
    list_presets,
)



@pytest.fixture(scope="module")
def model() -> AttentionNet:
    torch.manual_seed(0)
    return create_model("attention").eval()


def test_registered_with_paper_preset_as_default():
    assert list_presets("attention") == ["paper"]
    assert create_model("attention").config == AttentionConfig()


def test_parameter_count_by_hand(model):
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    expected = (
        conv(1, 32, 3) + conv(32, 32, 3) + conv(32, 64, 3) + conv(64, 64, 3)
        + 64 * 1  # attention 1x1 conv, no bias (a softmax over positions ignores it)
        + conv(64, 512, 3)
        + 512 * 128 + 128
        + 128 * 10 + 10
    )  # fmt: skip
    assert expected == 427_434
    assert count_parameters(model) == expected


def test_architecture(model):
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0]) for c in convs] == [
        (1, 32, 3, 1), (32, 32, 3, 1), (32, 64, 3, 1), (64, 64, 3, 1), (64, 1, 1, 0), (64, 512, 3, 1),
    ]  # fmt: skip
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(512, 128), (128, 10)]
    assert model.output_stride == 4


def test_mnist_forward_shapes_and_softmax(model):
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        logits, attention = model(x)
    assert logits.shape == (3, 10)
    assert attention.shape == (3, 1, 7, 7)
    assert (attention > 0).all()
    torch.testing.assert_close(attention.sum(dim=(1, 2, 3)), torch.ones(3), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.attention_map(x), attention)


def test_attention_is_the_softmax_of_the_1x1_conv(model):
    """Checked against a direct computation, so a softmax over channels or rows would fail."""
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        scores = model.attention(model.features(x))  # N x 1 x 7 x 7
        expected = scores.exp() / scores.exp().sum(dim=(2, 3), keepdim=True)
        logits, attention = model(x)
        head = model.head(model.features(x) * expected).mean(dim=(2, 3))
    torch.testing.assert_close(attention, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits, model.classifier(head), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(28, 28), (29, 31), (5, 7), (1, 1), (64, 37), (3, 40)])
def test_any_input_size(model, size):
    h, w = size
    x = torch.rand(2, 1, h, w)
    with torch.no_grad():
        logits, attention = model(x)
        alone = model.attention_map(x)
    cells = (-(-h // 4), -(-w // 4))  # ceil: every pixel lies in some cell
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert attention.shape == (2, 1, *cells)
    torch.testing.assert_close(attention.sum(dim=(1, 2, 3)), torch.ones(2), rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, attention)


def test_attention_is_local_and_fully_convolutional(model):
    """A cell's attention score depends only on its neighbourhood, which excision relies on."""
    x = torch.rand(1, 1, 48, 48)
    y = x.clone()
    y[:, :, 40:, 40:] = torch.rand(1, 1, 8, 8)  # change only the bottom-right corner
    with torch.no_grad():
        a = model.attention(model.features(x))
        b = model.attention(model.features(y))
    # receptive field of a cell: 4 px cells, 3x3 convs -> cells 0..6 on each axis stay the same
    torch.testing.assert_close(a[..., :7, :7], b[..., :7, :7])
    assert not torch.allclose(a[..., 10:, 10:], b[..., 10:, 10:])


def test_one_training_step_reaches_every_parameter():
    torch.manual_seed(1)
    model = create_model("attention").train()
    logits, _ = model(torch.rand(4, 1, 28, 28))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_input_and_config():
    model = create_model("attention")
    with pytest.raises(ConfigError, match="N x 1 x H x W"):
        model(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ConfigError, match="two per stage"):
        AttentionConfig(widths=(32, 32, 64))
    with pytest.raises(ConfigError, match="'num_classes' must be positive"):
        AttentionConfig(num_classes=0)
