"""Networks, their registry, FLOP counting and safetensors checkpoints.

``create_model("segdec", "small")`` builds a network; ``save_pretrained``/``from_pretrained``
store and restore it with its config, so a checkpoint needs no code to be rebuilt.
"""

from .config import ModelConfig
from .flops import count_flops, count_parameters
from .hub import from_pretrained, save_pretrained
from .layers import ConvBlock, FeatureNorm, GradientMultiply, gradient_multiply
from .registry import create_model, list_models, list_presets, model_config, register_model
from .segdec import PRESETS as SEGDEC_PRESETS
from .segdec import SegDecConfig, SegDecNet, upsample_heatmap
from .attention import AttentionConfig, AttentionNet
from .unet import UNet, UNetConfig

__all__ = [
    "ModelConfig",
    "count_flops",
    "count_parameters",
    "from_pretrained",
    "save_pretrained",
    "ConvBlock",
    "FeatureNorm",
    "GradientMultiply",
    "gradient_multiply",
    "create_model",
    "list_models",
    "list_presets",
    "model_config",
    "register_model",
    "SEGDEC_PRESETS",
    "SegDecConfig",
    "SegDecNet",
    "upsample_heatmap",
    "AttentionConfig",
    "AttentionNet",
    "UNet",
    "UNetConfig",
]
