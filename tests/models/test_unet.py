"""The reconstruction U-Net: per-level skip switches, what the deep path cannot see, any size."""

from __future__ import annotations

import pytest
import torch

from defectkit.errors import ConfigError
from defectkit.models import (
    UNet,
    UNetConfig,
    count_parameters,
    create_model,
    list_presets,
)

OFF = (False, False, False, False)



def _tiny(seed: int = 0, **overrides) -> UNet:
    torch.manual_seed(seed)
    return create_model("unet", "tiny", **overrides).eval()


def test_presets():
    assert list_presets("unet") == ["paper", "small", "tiny"]
    paper = create_model("unet")
    assert paper.config.widths == (64, 128, 256, 512, 512) and paper.depth == 4
    assert paper.config.inference_skips == (False, False, True, True)
    # 4x4 strided convs down, 4x4 transposed convs up, two 3x3 convs per block, BatchNorm
    assert count_parameters(paper) == 28_798_529
    assert count_parameters(create_model("unet", "small")) < count_parameters(paper) / 10


def test_each_skip_switch_changes_the_output():
    model = _tiny()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        all_on = model(x, skips=True)
        for i in range(4):
            flags = tuple(j != i for j in range(4))
            assert (model(x, skips=flags) - all_on).abs().max() > 1e-3, f"skip {i} made no difference"
            only = tuple(j == i for j in range(4))
            assert (model(x, skips=only) - model(x, skips=OFF)).abs().max() > 1e-3, f"skip {i} alone made no difference"


def test_a_skip_that_is_off_passes_nothing_from_its_level():
    """Off: the decoder gets zeros of the same shape; on: exactly that encoder level's features."""
    model = _tiny()
    x = torch.rand(1, 1, 32, 32)
    levels = {}

    def capture(i):
        def hook(module, inputs, output):
            levels[i] = output

        return hook

    handles = [block.register_forward_hook(capture(i)) for i, block in enumerate(model.down)]
    merged = []
    handles += [up.register_forward_pre_hook(lambda m, args: merged.append(args[1])) for up in model.up]
    with torch.no_grad():
        model(x, skips=(False, True, False, True))
    for h in handles:
        h.remove()
    skip_for = {3 - k: t for k, t in enumerate(merged)}  # the decoder runs deep to shallow
    assert torch.equal(skip_for[0], torch.zeros_like(levels[0]))
    assert torch.equal(skip_for[2], torch.zeros_like(levels[2]))
    assert torch.equal(skip_for[1], levels[1]) and torch.equal(skip_for[3], levels[3])


def test_all_off_cannot_see_a_single_pixel():
    """Fine detail reaches the output through the shallowest skip; without skips it barely does."""
    for overrides in ({}, {"output": "linear", "norm": "none"}):
        model = _tiny(**overrides)
        x = torch.rand(1, 1, 32, 32)
        y = x.clone()
        y[0, 0, 13, 17] += 1.0
        with torch.no_grad():
            off = (model(y, skips=OFF) - model(x, skips=OFF)).abs().max()
            shallow = (model(y, skips=(True, False, False, False)) - model(x, skips=(True, False, False, False))).abs()
        assert shallow.max() > 20 * off, overrides
        # and with the shallow skip the change stays where the pixel was
        assert shallow[0, 0].argmax().item() in {r * 32 + c for r in range(11, 16) for c in range(15, 20)}


def test_default_skips_follow_the_mode_and_can_be_fixed():
    model = _tiny()
    assert model.active_skips() == OFF[:2] + (True, True)  # eval: the config's inference skips
    model.train()
    assert model.active_skips() == (True,) * 4
    model.skips = False
    assert model.active_skips() == OFF
    assert model.active_skips((True, False, True, False)) == (True, False, True, False)
    model.eval()
    model.skips = None
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), model(x, skips=(False, False, True, True)))
    with pytest.raises(ConfigError, match="4 true/false flags"):
        model(x, skips=(True, False))
    with pytest.raises(ConfigError, match="inference_skips has 2 flags"):
        UNetConfig(inference_skips=(True, True))


@pytest.mark.parametrize("size", [(32, 32), (17, 23), (5, 9), (1, 1), (40, 16)])
def test_any_input_size(size):
    model = _tiny()
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        y = model(x, skips=True)
    assert y.shape == x.shape
    assert ((y >= 0) & (y <= 1)).all()  # sigmoid output


def test_padding_does_not_mix_images_or_lose_the_border():
    model = _tiny()
    x = torch.rand(2, 1, 21, 19)
    with torch.no_grad():
        both = model(x, skips=True)
        first = model(x[:1], skips=True)
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-6)


def test_three_channels_and_linear_output():
    model = _tiny(in_channels=3, output="linear")
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 24, 24)
    assert (y < 0).any()  # not squashed


def test_backward_reaches_every_parameter():
    torch.manual_seed(2)
    model = create_model("unet", "tiny").train()
    x = torch.rand(2, 1, 20, 28)
    ((model(x) - x) ** 2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
