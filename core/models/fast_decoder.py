"""A lean inference forward for Llama-shaped decoders (Llama, SmolLM2, Mistral, Qwen2), used by
`NoteEncoder.encode`.

Why it exists: on a CPU with AMX the bf16 matrix products of a small LLM run near 2 TFLOP/s, so the
elementwise passes around them (RMSNorm in fp32 and back, rotary embedding built from cat/neg/mul/add,
SiLU-times-up, LoRA's extra casts, scalings and adds, the padding mask) took as long as the products
themselves. This path computes the same function with fewer, larger operations:

- LoRA is folded into the weights once (W + s * B A), not recomputed per call; the folded copy is cached
  and rebuilt when any weight changes (parameter versions are part of the key);
- q, k, v are one matrix product;
- RMSNorm reduces in fp32 in one pass and scales in two (see `_rms_norm`);
- rotary embedding is applied to q and k together, in place;
- attention is SDPA with `is_causal` and grouped KV heads: prompts are right-padded and read out only at
  real tokens, which under causal attention never see a pad token, so the padding mask changes nothing
  that is read and can be dropped.

Only the final, normed hidden states are returned (the note encoder reads one or two positions from
them). Anything this path does not know (other architectures, sliding windows, attention outputs,
gradients) goes through the model's own forward instead: see `supports`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FAST_ARCHITECTURES = ("llama", "mistral", "qwen2")
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2] if p.isdigit()) >= (2, 5)


def _linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a Linear, with any active, unmerged LoRA adapters folded in."""
    base = getattr(module, "base_layer", module)
    weight, bias = base.weight, base.bias
    adapters = getattr(module, "active_adapters", None)
    if adapters is not None and hasattr(module, "lora_A") and not getattr(module, "merged", False) \
            and not getattr(module, "disable_adapters", False):
        folded = weight.float()
        for name in adapters:
            if name not in module.lora_A:
                continue
            a, b = module.lora_A[name].weight.float(), module.lora_B[name].weight.float()
            folded = folded + module.scaling[name] * (b @ a)
        weight = folded.to(base.weight.dtype)
    return weight.detach(), None if bias is None else bias.detach()


def _lora_extra_state(module: nn.Module) -> tuple:
    """What, beyond parameter tensors, changes a LoRA layer's function: adapters, scalings, switches."""
    if not hasattr(module, "lora_A"):
        return ()
    return (tuple(getattr(module, "active_adapters", ())), tuple(sorted(module.scaling.items())),
            bool(getattr(module, "merged", False)), bool(getattr(module, "disable_adapters", False)))


def supports(decoder: nn.Module) -> bool:
    config = getattr(decoder, "config", None)
    if config is None or getattr(config, "model_type", None) not in FAST_ARCHITECTURES:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False  # a custom attention (the analysis recorder, say) was switched in: let it run
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "use_sliding_window", False):
        return False
    if getattr(config, "sliding_window", None) and config.model_type == "mistral":
        return False  # a window shorter than the prompt would change attention; keep the reference path
    layers = getattr(decoder, "layers", None)
    if not layers or not hasattr(decoder, "rotary_emb") or not hasattr(decoder, "norm"):
        return False
    first = layers[0]
    attention = getattr(first, "self_attn", None)
    return (attention is not None and all(hasattr(attention, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
            and not hasattr(attention, "q_norm") and hasattr(first, "mlp")
            and all(hasattr(first.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")))


def read_decoder_shape(weights, config) -> None:
    """The attention and MLP sizes both lean paths (inference here, training in lora_train) need."""
    weights.heads = config.num_attention_heads
    weights.kv_heads = getattr(config, "num_key_value_heads", None) or weights.heads
    weights.head_dim = getattr(config, "head_dim", None) or config.hidden_size // weights.heads
    weights.intermediate = config.intermediate_size
    weights.eps = config.rms_norm_eps


class FusedWeights:
    """Per-layer fused, LoRA-folded weights of a Llama-shaped decoder, rebuilt when the source changes."""

    def __init__(self, decoder: nn.Module, dtype: torch.dtype | None = None):
        """dtype: the compute dtype (bf16 where the model's forward would run under bf16 autocast)."""
        self.key = self.state_key(decoder, dtype)
        config = decoder.config
        read_decoder_shape(self, config)
        self.layers = []
        with torch.no_grad():
            for layer in decoder.layers[: config.num_hidden_layers]:
                attention, mlp = layer.self_attn, layer.mlp
                q, qb = _linear_weight(attention.q_proj)
                k, kb = _linear_weight(attention.k_proj)
                v, vb = _linear_weight(attention.v_proj)
                o, ob = _linear_weight(attention.o_proj)
                gate, gb = _linear_weight(mlp.gate_proj)
                up, ub = _linear_weight(mlp.up_proj)
                down, db = _linear_weight(mlp.down_proj)
                qkv_bias = None if qb is None and kb is None and vb is None else torch.cat(
                    [b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
                     for w, b in ((q, qb), (k, kb), (v, vb))])
                self.layers.append(dict(
                    input_norm=layer.input_layernorm.weight.detach(),
                    qkv=torch.cat([q, k, v]).contiguous(), qkv_bias=qkv_bias, o=o.contiguous(), o_bias=ob,
                    post_norm=layer.post_attention_layernorm.weight.detach(),
                    gate=gate.contiguous(), gate_bias=gb, up=up.contiguous(), up_bias=ub,
                    down=down.contiguous(), down_bias=db))
        self.final_norm = decoder.norm.weight.detach()
        if dtype is not None:
            self.final_norm = self.final_norm.to(dtype)
            for layer in self.layers:
                for name, tensor in layer.items():
                    if tensor is not None:
                        layer[name] = tensor.to(dtype)

    @staticmethod
    def state_key(decoder: nn.Module, dtype: torch.dtype | None = None) -> tuple:
        """Changes whenever a weight is replaced or updated in place (optimizer steps bump `_version`)."""
        parts = [dtype] + [(id(p), p._version, p.device, p.dtype) for p in decoder.parameters()]
        parts += [_lora_extra_state(m) for m in decoder.modules() if hasattr(m, "lora_A")]
        return tuple(parts)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, L, heads, head_dim): x*cos + rotate_half(x)*sin, in three passes."""
    half = x.shape[-1] // 2
    rotated = x * cos
    rotated[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1.0)
    rotated[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return rotated


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in three passes: the norm reduced in fp32 in one pass (never materialising x**2), then two
    multiplies. `F.rms_norm` decomposes into six passes on CPU (upcast, pow, mean, multiply, downcast,
    weight); this is 1.8x faster there and the same to bf16 precision."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    scale = torch.rsqrt(norm.square_().div_(x.shape[-1]).add_(eps)).to(x.dtype)
    return (x * scale).mul_(weight)


def forward(decoder: nn.Module, weights: FusedWeights, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Final normed hidden states (B, L, width) for right-padded prompts (valid at every real token)."""
    batch, length, width = inputs_embeds.shape
    dtype = weights.final_norm.dtype
    hidden = inputs_embeds.to(dtype)
    positions = torch.arange(length, device=hidden.device).unsqueeze(0)
    cos, sin = decoder.rotary_emb(hidden, positions)
    cos, sin = cos.to(dtype).unsqueeze(2), sin.to(dtype).unsqueeze(2)  # (1, L, 1, head_dim)
    heads, kv_heads, head_dim = weights.heads, weights.kv_heads, weights.head_dim
    q_width = heads * head_dim
    for layer in weights.layers:
        normed = _rms_norm(hidden, layer["input_norm"], weights.eps)
        qkv = F.linear(normed, layer["qkv"], layer["qkv_bias"]).view(batch, length, heads + 2 * kv_heads, head_dim)
        query_key = _rope(qkv[:, :, : heads + kv_heads], cos, sin)
        q = query_key[:, :, :heads].transpose(1, 2)
        k = query_key[:, :, heads:].transpose(1, 2)
        v = qkv[:, :, heads + kv_heads:].transpose(1, 2)
        if kv_heads != heads and not _SDPA_GQA:  # torch < 2.5: expand the shared key/value heads
            k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        gqa = {"enable_gqa": True} if kv_heads != heads and _SDPA_GQA else {}
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        attended = attended.transpose(1, 2).reshape(batch, length, q_width)
        hidden = hidden + F.linear(attended, layer["o"], layer["o_bias"])
        normed = _rms_norm(hidden, layer["post_norm"], weights.eps)
        # gate and up as two products, not one fused: SiLU on a contiguous tensor runs ~1.6x faster than on
        # a strided half, which outweighs the larger product (measured).
        gate = F.silu(F.linear(normed, layer["gate"], layer["gate_bias"]), inplace=True)
        hidden = hidden + F.linear(gate.mul_(F.linear(normed, layer["up"], layer["up_bias"])), layer["down"],
                                   layer["down_bias"])
    return _rms_norm(hidden, weights.final_norm, weights.eps)


# Compiled variant for long encoding jobs. Prompt lengths are padded up to a multiple of LENGTH_BUCKET so that
# a job compiles a few shapes rather than one per batch (right pads are never seen by a real token under
# causal attention, and are cut off again). Compiling takes minutes on a 2-core CPU: interactive queries
# stay eager, and `core.runtime.use_compile_cache` keeps inductor's kernels in the workspace cache so that
# the next run of the same shapes loads them instead.
LENGTH_BUCKET = 32
_compiled_forward = None


def compiled_forward(decoder: nn.Module, weights: FusedWeights, inputs_embeds: torch.Tensor) -> torch.Tensor:
    global _compiled_forward
    if _compiled_forward is None:
        _compiled_forward = torch.compile(forward, dynamic=False)
    length = inputs_embeds.shape[1]
    padded = -(-length // LENGTH_BUCKET) * LENGTH_BUCKET
    if padded != length:
        inputs_embeds = F.pad(inputs_embeds, (0, 0, 0, padded - length))
    return _compiled_forward(decoder, weights, inputs_embeds)[:, :length]
