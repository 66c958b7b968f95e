"""Int8 storage for shipped checkpoints: each large matrix as int8 rows plus one fp32 scale per row.

A demo checkpoint holds only trained weights (connector, slot vector, gate, head, LoRA), yet at ~12M
parameters bf16 is still ~23 MB per variant. Symmetric per-row int8 quarters fp32; the eval.json shipped
beside each checkpoint is measured on the de-quantised weights, so what a user reproduces is what was
measured. Small tensors (biases, norms, scalars) and non-float buffers are stored as they are.
"""
from __future__ import annotations

import torch

SCALE_SUFFIX = ".__int8_row_scale__"
MIN_ELEMENTS = 4096


def quantize_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    packed = {}
    for key, value in tensors.items():
        if value.is_floating_point() and value.ndim == 2 and value.numel() >= MIN_ELEMENTS:
            rows = value.float()
            scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
            packed[key] = torch.round(rows / scale).clamp(-127, 127).to(torch.int8)
            packed[key + SCALE_SUFFIX] = scale  # fp32: one per row, and a rounded scale would skew the whole row
        else:
            packed[key] = value
    return packed


def dequantize_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of quantize_state; a state without int8 rows is returned unchanged."""
    if not any(key.endswith(SCALE_SUFFIX) for key in tensors):
        return tensors
    plain = {}
    for key, value in tensors.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(key + SCALE_SUFFIX)
        plain[key] = value.float() * scale.float() if scale is not None else value
    return plain
