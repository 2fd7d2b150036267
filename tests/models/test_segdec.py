"""SegDecNet, its layers, registry, checkpoints and FLOP counts.

Model tests follow segmentation_models.pytorch's base-class pattern: one class of checks,
run once per preset, on inputs just large enough for the decision net (64 px a side).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from defectkit.errors import ConfigError
from defectkit.models import (
    FeatureNorm,
    SegDecConfig,
    SegDecNet,
    count_flops,
    count_parameters,
    create_model,
    gradient_multiply,
    list_models,
    list_presets,
    model_config,
)
from defectkit.models.segdec import PRESETS




def _model(preset: str, seed: int = 0, **overrides) -> SegDecNet:
    torch.manual_seed(seed)
    return create_model("segdec", preset, **overrides)


# --------------------------------------------------------------------------------------------
# Per-preset checks
# --------------------------------------------------------------------------------------------


class _PresetTests:
    preset: str
    # (channels, height, width): the smallest sizes the decision net accepts, some not
    # multiples of 64 (its pools then floor, as in the reference)
    sizes = [(1, 64, 128), (1, 136, 64), (3, 80, 168)]

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls) -> SegDecNet:
        return _model(cls.preset).eval()

    def test_forward_shapes(self):
        for c, h, w in self.sizes:
            model = _model(self.preset, in_channels=c).eval()
            x = torch.randn(2, c, h, w)
            with torch.no_grad():
                logit, seg = model(x)
            assert logit.shape == (2,)
            assert seg.shape == (2, 1, h // 8, w // 8)
            assert torch.isfinite(logit).all() and torch.isfinite(seg).all()

    def test_batch_items_are_independent(self, model):
        x = torch.randn(2, 1, 64, 128)
        with torch.no_grad():
            both = model(x)
            first = model(x[:1])
        torch.testing.assert_close(both[0][:1], first[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(both[1][:1], first[1], rtol=1e-4, atol=1e-5)

    def test_backward_reaches_every_parameter(self):
        model = _model(self.preset, gradient_adjustment=1.0).train()
        x = torch.randn(2, 1, 64, 136)
        target = (torch.rand(2, 1, 8, 17) > 0.7).float()
        logit, seg = model(x)
        loss = F.binary_cross_entropy_with_logits(logit, torch.tensor([1.0, 0.0])) + F.binary_cross_entropy_with_logits(seg, target)
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name

    def test_size_checks(self, model):
        with pytest.raises(ConfigError, match="divisible by 8"):
            model(torch.zeros(1, 1, 64, 132))
        with pytest.raises(ConfigError, match="too small.*would see 0x1 pixels"):
            model(torch.zeros(1, 1, 64, 32))
        # one pixel in the last block would make the decision features constant
        with pytest.raises(ConfigError, match="too small.*would see 1x1 pixels.*64x128 or 128x64"):
            model(torch.zeros(1, 1, 64, 64))
        with pytest.raises(ConfigError, match="N x 1 x H x W"):
            model(torch.zeros(1, 3, 64, 64))


    def test_config_round_trips_through_json_and_yaml(self):
        cfg = PRESETS[self.preset]
        assert SegDecConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        assert SegDecConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


class TestPaper(_PresetTests):
    preset = "paper"
    sizes = [(1, 64, 128), (3, 136, 64)]  # 5.3 GFLOP per 64x128 image: keep it to two

    def test_parameter_count(self):
        # the published weights, plus the seg offset the reference trains (models/segdec.py)
        assert count_parameters(_model("paper", seg_bias=False)) == 15_637_212
        assert count_parameters(_model("paper")) == 15_637_212 + 1
        volume = _model("paper").volume[-1].conv.weight
        assert volume.shape == (1024, 64, 15, 15) and volume.numel() == 14_745_600
        # three input channels add 2 x 32 x 5 x 5 weights to the first conv only
        assert count_parameters(_model("paper", in_channels=3, seg_bias=False)) == 15_637_212 + 1_600

    def test_architecture(self, model):
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0]) for c in convs] == [
            (1, 32, 5, 2), (32, 64, 5, 2), (64, 64, 5, 2), (64, 64, 5, 2),
            (64, 64, 5, 2), (64, 64, 5, 2), (64, 64, 5, 2), (64, 64, 5, 2),
            (64, 1024, 15, 7), (1024, 1, 1, 0),
            (1025, 8, 5, 2), (8, 16, 5, 2), (16, 32, 5, 2),
        ]  # fmt: skip
        assert all(c.bias is None for c in convs)
        assert model.classifier.in_features == 66 and model.classifier.bias is not None
        seg_norm = model.seg_head[1]
        # the reference's trained seg offset starts at 0, as its torch.zeros does
        assert seg_norm.bias.shape == (1,) and float(seg_norm.bias.detach()) == 0.0 and seg_norm.scale.shape == (1,)
        norms = [m for m in model.modules() if isinstance(m, FeatureNorm)]
        assert all(n.eps == 1e-3 and not n.use_variance for n in norms)
        assert model.gradient_adjustment == 0.0  # the paper's gradient-flow adjustment is on

    def test_xavier_normal_init(self):
        w = _model("paper").volume[-1].conv.weight
        fan_in, fan_out = 64 * 225, 1024 * 225
        assert w.std().item() == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.01)
        assert abs(w.mean().item()) < 1e-4


class TestSmall(_PresetTests):
    preset = "small"


class TestTiny(_PresetTests):
    preset = "tiny"


def test_presets_are_cheaper_in_the_promised_ratio():
    paper = count_flops(_model("paper"), (1, 512, 512))
    small = count_flops(_model("small"), (1, 512, 512))
    tiny = count_flops(_model("tiny"), (1, 512, 512))
    assert 10 <= paper / small <= 20
    assert tiny < small


# --------------------------------------------------------------------------------------------
# FeatureNorm
# --------------------------------------------------------------------------------------------


def _feature_norm_reference(x, scale, bias, eps, use_variance):
    x = x.double()
    flat = x.flatten(2)
    mean = flat.mean(-1)[..., None, None]
    var = ((flat - flat.mean(-1, keepdim=True)) ** 2).sum(-1) / (flat.shape[-1] - 1)
    spread = (var if use_variance else var.sqrt())[..., None, None]
    return scale.double().view(1, -1, 1, 1) * (x - mean) / torch.sqrt(spread + eps) + bias.double().view(1, -1, 1, 1)


@pytest.mark.parametrize("use_variance", [False, True])
def test_feature_norm_matches_formula(use_variance):
    torch.manual_seed(1)
    norm = FeatureNorm(3, eps=1e-3, use_variance=use_variance)
    with torch.no_grad():
        norm.scale.copy_(torch.tensor([0.5, 1.0, 2.0]))
        norm.bias.copy_(torch.tensor([-1.0, 0.0, 3.0]))
    x = torch.randn(2, 3, 5, 7) * torch.tensor([0.01, 1.0, 30.0]).view(1, 3, 1, 1) + 4.0
    expected = _feature_norm_reference(x, norm.scale.detach(), norm.bias.detach(), 1e-3, use_variance)
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_variance", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_feature_norm_gradients_match_formula(use_variance, bias):
    """Training steps on the formula's gradients, whichever kernel computes them (the variance
    form runs through the fused group-norm kernel)."""
    torch.manual_seed(2)
    norm = FeatureNorm(3, eps=1e-3, use_variance=use_variance, bias=bias)
    with torch.no_grad():
        norm.scale.copy_(torch.tensor([0.5, 1.0, 2.0]))
    x = (torch.randn(2, 3, 6, 5) * torch.tensor([0.05, 1.0, 20.0]).view(1, 3, 1, 1) + 3.0).requires_grad_()
    upstream = torch.randn(2, 3, 6, 5)
    (norm(x) * upstream).sum().backward()
    xd = x.detach().double().requires_grad_()
    scale = norm.scale.detach().double().requires_grad_()
    shift = torch.zeros(3, dtype=torch.float64, requires_grad=bias)
    (_feature_norm_reference(xd, scale, shift, 1e-3, use_variance) * upstream.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.scale.grad.double(), scale.grad, rtol=1e-4, atol=1e-4)
    if bias:
        torch.testing.assert_close(norm.bias.grad.double(), shift.grad, rtol=1e-4, atol=1e-4)


def test_feature_norm_std_quirk_differs_from_variance():
    x = torch.randn(1, 1, 8, 8) * 5
    assert not torch.allclose(FeatureNorm(1)(x), FeatureNorm(1, use_variance=True)(x), atol=1e-2)
    # the unbiased std, not the biased one: a plane of two pixels [0, 2] has std sqrt(2)
    y = FeatureNorm(1, eps=1e-3)(torch.tensor([[[[0.0, 2.0]]]]))
    torch.testing.assert_close(y, torch.tensor([[[[-1.0, 1.0]]]]) / math.sqrt(math.sqrt(2) + 1e-3))


def test_feature_norm_init_and_parameters():
    norm = FeatureNorm(4)
    assert torch.equal(norm.scale, torch.ones(4)) and torch.equal(norm.bias, torch.zeros(4))
    assert [n for n, _ in FeatureNorm(1, bias=False).named_parameters()] == ["scale"]


def test_feature_norm_degenerate_planes_stay_finite():
    norm = FeatureNorm(2)
    with torch.no_grad():
        norm.bias.fill_(0.25)
    x = torch.zeros(1, 2, 4, 4, requires_grad=True)  # constant plane: zero spread
    norm(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    one = torch.randn(1, 2, 1, 1, requires_grad=True)  # one pixel: no unbiased spread
    y = norm(one)
    assert torch.equal(y, torch.full_like(y, 0.25))
    y.sum().backward()
    assert torch.isfinite(one.grad).all()


def test_feature_norm_keeps_half_precision_dtype():
    x = torch.randn(1, 2, 4, 4)
    y = FeatureNorm(2)(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), FeatureNorm(2)(x), rtol=0.02, atol=0.02)


# --------------------------------------------------------------------------------------------
# Gradient-flow adjustment
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, -2.0])
def test_gradient_multiply_scales_only_the_gradient(factor):
    x = torch.randn(3, 4, requires_grad=True)
    y = gradient_multiply(x, factor)
    assert torch.equal(y, x)
    (y * torch.arange(4.0)).sum().backward()
    assert torch.equal(x.grad, (torch.arange(4.0) * factor).expand(3, 4))


def _classification_grads(model: SegDecNet):
    torch.manual_seed(3)
    model.zero_grad(set_to_none=True)
    logit, _ = model(torch.randn(2, 1, 64, 128))
    F.binary_cross_entropy_with_logits(logit, torch.tensor([1.0, 0.0])).backward()
    seg = {"first conv": model.volume[0].conv.weight.grad, "volume conv": model.volume[-1].conv.weight.grad,
           "seg head": model.seg_head[0].weight.grad, "seg norm": model.seg_head[1].scale.grad}  # fmt: skip
    dec = [p.grad for p in (*model.decision.parameters(), *model.classifier.parameters())]
    return seg, dec


def test_gradient_adjustment_stops_classification_loss_at_segmentation_net():
    model = _model("tiny").train()
    assert model.gradient_adjustment == 0.0
    seg, dec = _classification_grads(model)
    for name, grad in seg.items():
        assert grad is not None and torch.count_nonzero(grad) == 0, name
    assert all(g is not None and g.abs().sum() > 0 for g in dec)

    model.gradient_adjustment = 1.0
    seg, dec = _classification_grads(model)
    for name, grad in seg.items():
        assert grad.abs().sum() > 0, name
    assert all(g.abs().sum() > 0 for g in dec)

    with pytest.raises(ConfigError):
        model.gradient_adjustment = float("inf")


def test_gradient_adjustment_scales_segmentation_grads_linearly():
    model = _model("tiny").double().train()
    model.gradient_adjustment = 1.0
    full = _classification_grads_double(model)
    model.gradient_adjustment = 0.25
    quarter = _classification_grads_double(model)
    torch.testing.assert_close(quarter, 0.25 * full)


def _classification_grads_double(model):
    torch.manual_seed(4)
    model.zero_grad(set_to_none=True)
    logit, _ = model(torch.randn(2, 1, 64, 128, dtype=torch.float64))
    F.binary_cross_entropy_with_logits(logit, torch.tensor([1.0, 0.0], dtype=torch.float64)).backward()
    return model.volume[0].conv.weight.grad.clone()


def test_classifier_inputs_are_max_avg_feature_then_max_avg_seg():
    model = _model("tiny").eval()
    captured = {}
    model.classifier.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    x = torch.randn(1, 1, 128, 64)
    with torch.no_grad():
        _, seg = model(x)
        features = model.decision(torch.cat([model.volume(x), seg], 1))
    expected = torch.cat([features.amax((2, 3)), features.mean((2, 3)), seg.amax((2, 3)), seg.mean((2, 3))], 1)
    torch.testing.assert_close(captured["x"], expected)


@pytest.mark.parametrize("seg_bias", [False, True])
def test_seg_offset_lets_a_good_image_map_to_background(seg_bias):
    # Without the offset the seg head's FeatureNorm makes every map zero-mean, so an all-zero
    # target can never be met (mean probability stays 0.5, loss stays at ln 2 or above).
    model = _model("tiny", seg_bias=seg_bias)
    assert count_parameters(model) == count_parameters(_model("tiny", seg_bias=False)) + int(seg_bias)
    x = torch.randn(2, 1, 128, 64, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD([*model.volume.parameters(), *model.seg_head.parameters()], lr=0.5)  # the segmentation net
    for _ in range(30):
        _, seg = model(x)
        loss = F.binary_cross_entropy_with_logits(seg, torch.zeros_like(seg))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, seg = model(x)
    assert seg.mean((1, 2, 3)).abs().max() < 1e-4 if not seg_bias else seg.mean() < -1.0
    assert (loss.item() >= math.log(2) - 1e-4) != seg_bias


# --------------------------------------------------------------------------------------------
# Config and registry
# --------------------------------------------------------------------------------------------


def test_config_defaults_are_the_paper():
    cfg = SegDecConfig()
    assert cfg == PRESETS["paper"]
    assert cfg.to_dict() == {
        "in_channels": 1, "seg_widths": [32, 64, 64, 64, 64, 64, 64, 64], "stage_depths": [1, 3, 4],
        "kernel": 5, "volume_channels": 1024, "volume_kernel": 15, "decision_widths": [8, 16, 32],
        "decision_kernel": 5, "norm_eps": 1e-3, "norm_uses_variance": False, "seg_bias": True,
        "gradient_adjustment": 0.0, "input_size": [512, 1408],
    }  # fmt: skip
    assert cfg.output_stride == 8 and cfg.min_input_size == 64


def test_config_coercion_and_errors():
    cfg = SegDecConfig.from_dict({"seg_widths": [8] * 8, "norm_eps": "1e-3", "input_size": [64, 128]})
    assert cfg.seg_widths == (8,) * 8 and cfg.norm_eps == 1e-3 and cfg.input_size == (64, 128)
    with pytest.raises(ConfigError, match="unknown segdec config option.*colour.*valid: in_channels"):
        SegDecConfig.from_dict({"colour": 1})
    with pytest.raises(ConfigError, match="in_channels: expected a number"):
        SegDecConfig(in_channels=True)
    with pytest.raises(ConfigError, match=r"seg_widths\[1\]: expected a valid integer"):
        SegDecConfig(seg_widths=(8, "x", 8, 8, 8, 8, 8, 8))
    with pytest.raises(ConfigError, match="stage_depths"):
        SegDecConfig(seg_widths=(8, 8))
    with pytest.raises(ConfigError, match="odd"):
        SegDecConfig(volume_kernel=4)
    with pytest.raises(ConfigError, match="divisible by 8"):
        SegDecConfig(input_size=(500, 1250))
    with pytest.raises(ConfigError, match="too small"):
        SegDecConfig(input_size=(64, 64))
    with pytest.raises(ConfigError, match="must be a mapping"):
        SegDecConfig.from_dict([1, 2])


def test_registry_create_and_overrides():
    assert "segdec" in list_models()
    assert list_presets("segdec") == ["paper", "small", "tiny"]
    assert model_config("segdec") == SegDecConfig()
    cfg = model_config("segdec", "tiny", in_channels=3, norm_uses_variance=False)
    assert cfg.in_channels == 3 and not cfg.norm_uses_variance and cfg.volume_channels == 32
    model = create_model("segdec", "tiny", in_channels=3, gradient_adjustment=1.0)
    assert isinstance(model, SegDecNet) and model.config.in_channels == 3 and model.gradient_adjustment == 1.0
    assert model.volume[0].conv.in_channels == 3
    assert not any(m.use_variance for m in create_model("segdec", "tiny", norm_uses_variance=False).modules() if isinstance(m, FeatureNorm))
    # the paper preset keeps the reference's sqrt(std) quirk; our cheaper presets normalise properly
    assert [model_config("segdec", p).norm_uses_variance for p in ("paper", "small", "tiny")] == [False, True, True]
    assert PRESETS["tiny"].in_channels == 1  # presets are not changed by overrides


def test_registry_errors_list_the_choices():
    with pytest.raises(ConfigError, match="unknown model 'unet9'; available models: .*segdec"):
        create_model("unet9")
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*paper, small, tiny"):
        create_model("segdec", "huge")
    with pytest.raises(ConfigError, match="unknown segdec config option.*widths.*valid:.*seg_widths"):
        create_model("segdec", "tiny", widths=(1, 2))


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def _paper_flops(h: int, w: int) -> int:
    """2 x multiply-adds of the paper network, from its layer table."""
    total, hw = 0, h * w
    total += hw * 1 * 32 * 25
    total += (hw // 4) * (32 * 64 + 2 * 64 * 64) * 25
    total += (hw // 16) * 4 * 64 * 64 * 25
    total += (hw // 64) * (64 * 1024 * 225 + 1024)
    total += (h // 16) * (w // 16) * 1025 * 8 * 25
    total += (h // 32) * (w // 32) * 8 * 16 * 25
    total += (h // 64) * (w // 64) * 16 * 32 * 25
    total += 66
    return 2 * total


@pytest.mark.parametrize(("h", "w", "gflop"), [(512, 512, 168.6), (1408, 512, 463.7)])
def test_paper_flops(h, w, gflop):
    flops = count_flops(_model("paper"), (1, h, w))
    assert flops == _paper_flops(h, w)
    assert flops / 1e9 == pytest.approx(gflop, rel=0.01)


def test_count_flops_on_meta_matches_a_real_forward():
    model = _model("tiny")
    counted: list[int] = []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            counted.append(2 * output.numel() * module.in_channels * k)
        else:
            counted.append(2 * output.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.randn(2, 1, 64, 136))
    for h in handles:
        h.remove()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_flops(model, (2, 1, 64, 136)) == sum(counted)
    assert count_flops(model, (1, 64, 136)) * 2 == sum(counted)
    # the model is left as it was: real weights, no hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
    # a hand count for one layer: the first 5x5 conv, 1 -> 8 channels at 64x136, batch 2
    assert counted[0] == 2 * (2 * 8 * 64 * 136) * 25
