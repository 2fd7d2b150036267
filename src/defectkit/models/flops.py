"""FLOP and parameter counts for benchmarks and model cards.

FLOPs are 2 x multiply-adds of convolutions and linear layers only (bias adds, norms, pools
and activations excluded), the convention papers quote. The forward runs on the ``meta``
device, so counting the paper network at full resolution costs no compute or memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["count_flops", "count_parameters"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward on an input of ``input_shape`` ((C, H, W) means batch 1)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    total = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, _CONV):
            macs = output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        elif isinstance(module, _CONV_T):
            macs = inputs[0].numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
        else:  # Linear
            macs = output.numel() * module.in_features
        total += 2 * macs

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (*_CONV, *_CONV_T, nn.Linear))]
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in (*model.named_parameters(), *model.named_buffers())
    }
    try:
        with torch.no_grad():
            functional_call(model, state, (torch.empty(shape, device="meta"),))
    finally:
        for h in handles:
            h.remove()
    return total
