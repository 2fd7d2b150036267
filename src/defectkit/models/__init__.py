"""Networks, their registry, FLOP counting and safetensors checkpoints.

``create_model("segdec", "small")`` builds a network; ``model_from_config(name, config)``
rebuilds one from the config a run folder stores beside its safetensors weights.
"""

from .config import ModelConfig
from .flops import count_flops, count_parameters
from .layers import ConvBlock, FeatureNorm, gradient_multiply
from .registry import create_model, list_models, list_presets, model_config, model_from_config, register_model
from .segdec import PRESETS as SEGDEC_PRESETS
from .segdec import SegDecConfig, SegDecNet
from .attention import AttentionConfig, AttentionNet
from .unet import UNet, UNetConfig

__all__ = [
    "ModelConfig",
    "count_flops",
    "count_parameters",
    "ConvBlock",
    "FeatureNorm",
    "gradient_multiply",
    "create_model",
    "list_models",
    "list_presets",
    "model_config",
    "model_from_config",
    "register_model",
    "SEGDEC_PRESETS",
    "SegDecConfig",
    "SegDecNet",
    "AttentionConfig",
    "AttentionNet",
    "UNet",
    "UNetConfig",
]
