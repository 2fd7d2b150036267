"""Every registered model and preset: built, saved as a run folder saves it (safetensors weights
plus the config's dict) and rebuilt from that, giving the same weights and outputs. Registering
a model or a preset is what gets it tested here."""

from __future__ import annotations

import pytest
import torch

from defectkit.errors import DataError
from defectkit.files import load_weights, save_weights
from defectkit.models import create_model, list_models, list_presets, model_from_config

PRESETS = [(name, preset) for name in list_models() for preset in list_presets(name)]


def outputs(model, x):
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("name, preset", PRESETS, ids=[f"{n}-{p}" for n, p in PRESETS])
def test_save_and_rebuild_every_preset(name, preset, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, preset).eval()
    save_weights(tmp_path / "model.safetensors", model.state_dict())
    stored = model.config.to_dict()  # plain YAML/JSON values, as config.yaml holds them
    assert all(not isinstance(v, tuple) for v in stored.values())
    rebuilt = model_from_config(name, stored)
    assert rebuilt.config == model.config and type(rebuilt) is type(model)
    load_weights(rebuilt, tmp_path / "model.safetensors")
    rebuilt.eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key]), key
    x = torch.rand(*model.config.example_shape())
    for a, b in zip(outputs(model, x), outputs(rebuilt, x)):
        assert torch.equal(a, b)


def test_mismatched_weights_name_the_tensor_and_both_shapes(tmp_path):
    model = create_model("segdec", "tiny")
    save_weights(tmp_path / "model.safetensors", model.state_dict())
    wider = model_from_config("segdec", {**model.config.to_dict(), "volume_channels": 48})
    with pytest.raises(DataError, match=r"model\.safetensors.*tensor 'volume\.11\.conv\.weight' has shape \[32, 16, 5, 5\] in the file but the config needs \[48, 16, 5, 5\]"):
        load_weights(wider, tmp_path / "model.safetensors")
    shallower = model_from_config("segdec", {**model.config.to_dict(), "decision_widths": [8, 16]})
    with pytest.raises(DataError, match=r"unexpected 3 tensor\(s\): decision\.5\.conv\.weight"):
        load_weights(shallower, tmp_path / "model.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match=r"cannot read weights .*broken\.safetensors"):
        load_weights(model, tmp_path / "broken.safetensors")
    with pytest.raises(DataError, match="model file missing"):
        load_weights(model, tmp_path / "none.safetensors")
