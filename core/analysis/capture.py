"""Attention the analysis can see into: an eager attention function registered with transformers, switched
on for one LLM for the duration of a `with` block and restored afterwards.

transformers returns no attention weights under SDPA, and its eager path gives weights but no handle on the
pre-softmax scores. So, instead of patching one model family's module, this registers its own attention
function under `ANALYSIS_ATTENTION` in transformers' `AttentionInterface` (and the eager mask builder under the
same name in `AttentionMaskInterface`), and points the LLM's config at it while the block runs. Every decoder
that dispatches through that interface (Llama, SmolLM2, Qwen2/3, Mistral, Gemma without soft-capping, ...)
then computes attention as plain eager attention here, and the function can:

- put a multiplier of ones (requires_grad) on the pre-softmax scores, or on the post-softmax weights, of
  every layer, for saliency;
- record the softmax weights of every layer, for attention maps.

The recorder is thread-local: another thread running the same model meanwhile computes ordinary eager
attention (identical outputs, only slower) and records nothing. The config switch itself is shared, so the
block holds a lock: two analyses of the same model run one after the other.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

ANALYSIS_ATTENTION = "notellm2_analysis"
MULTIPLIER_PLACES = ("pre_softmax", "post_softmax")

_local = threading.local()
_switch_lock = threading.RLock()
_registered = False


@dataclass
class AttentionRecorder:
    multiplier: str | None = None  # None | "pre_softmax" | "post_softmax"
    record_weights: bool = False
    multipliers: list[torch.Tensor] = field(default_factory=list)  # one (N, heads, T, T) per layer, in call order
    weights: list[torch.Tensor] = field(default_factory=list)  # softmax weights, detached, float32


def _analysis_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """Eager attention (transformers' `eager_attention_forward`), with the two hooks of the recorder."""
    recorder: AttentionRecorder | None = getattr(_local, "recorder", None)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if recorder is not None and recorder.multiplier == "pre_softmax":
        multiplier = torch.ones(scores.shape, dtype=torch.float32, device=scores.device, requires_grad=True)
        recorder.multipliers.append(multiplier)
        scores = scores.float() * multiplier
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32)
    if recorder is not None and recorder.multiplier == "post_softmax":
        multiplier = torch.ones(weights.shape, dtype=torch.float32, device=weights.device, requires_grad=True)
        recorder.multipliers.append(multiplier)
        weights = weights * multiplier
    if recorder is not None and recorder.record_weights:
        recorder.weights.append(weights.detach().float())
    weights = nn.functional.dropout(weights.to(query.dtype), p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ANALYSIS_ATTENTION, _analysis_attention)
    AttentionMaskInterface.register(ANALYSIS_ATTENTION, eager_mask)
    _registered = True


def _configs(llm: nn.Module) -> list:
    """Every distinct transformers config inside the LLM (the model's, and any sub-config objects)."""
    seen, configs = set(), []
    for module in llm.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation_internal") and id(config) not in seen:
            seen.add(id(config))
            configs.append(config)
    return configs


@contextmanager
def analysis_attention(llm: nn.Module, multiplier: str | None = None, record_weights: bool = False):
    """Run `llm` with the analysis attention inside the block; yields the AttentionRecorder it fills.

    The LLM's previous attention implementation (usually "sdpa") is restored on exit, even on error."""
    if multiplier is not None and multiplier not in MULTIPLIER_PLACES:
        raise ValueError(f"multiplier must be one of {MULTIPLIER_PLACES} or None, not {multiplier!r}")
    _register()
    recorder = AttentionRecorder(multiplier=multiplier, record_weights=record_weights)
    with _switch_lock:
        configs = _configs(llm)
        saved = [config._attn_implementation_internal for config in configs]
        previous = getattr(_local, "recorder", None)
        try:
            for config in configs:
                config._attn_implementation_internal = ANALYSIS_ATTENTION
            _local.recorder = recorder
            yield recorder
        finally:
            _local.recorder = previous
            for config, implementation in zip(configs, saved):
                config._attn_implementation_internal = implementation
