"""A lean training forward/backward for Llama-shaped decoders (Llama, SmolLM2, Mistral, Qwen2) whose base
weights are frozen: LoRA fine-tuning, or a frozen LLM that only passes gradients back to the visual tokens.

Why it exists: the frozen model does only about twice its forward FLOPs per training step (the backward
computes activation gradients, never weight gradients), so every fixed cost around the matrix products
weighs double. Through peft and transformers a step spent a large share of its time outside the products:
activations cast to fp32 and back around each of the ~210 adapters, autocast's casts, RMSNorm, rotary and
SiLU built from many small passes in both directions, and the gradient of every slice assembled from zeros.
This path computes the same function with fewer, larger operations:

- activations stay in the compute dtype (bf16 under the backbone's autocast) end to end;
- a LoRA projection is one autograd node (`_LoraLinear`): base product, the rank-r products and the
  scaled add in the forward; in the backward the activation gradient is one product plus one fused
  multiply-add, and the adapters' gradients two small products. No casts of activations anywhere;
- q/k/v and gate/up are fused: their frozen base weights are concatenated once (cached, rebuilt only when
  a base weight changes), their adapters' A matrices stacked and their B matrices placed block-diagonally,
  so each group is one node. The trainable parameters stay peft's own `lora_A`/`lora_B` tensors (fp32
  masters, cast per step: they are small), so optimizer state and checkpoints keep peft's key names;
- RMSNorm, rotary embedding and SiLU-times-up have hand-written backward passes that write the gradient
  of a fused tensor into one buffer instead of assembling it from slices.

peft + transformers remain the reference (tests compare losses and gradients) and the fallback for anything
`supports` refuses: other architectures, trainable base weights or norms, DoRA, dropout, several active
adapters, hooks, attention masks other than right padding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.models import fast_decoder

_PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
                ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


# ------------------------------------------------------------------------------------------ support
def _adapter(module: nn.Module) -> tuple[nn.Parameter, nn.Parameter, float] | None | bool:
    """(A, B, scale) of a projection's single active LoRA adapter; None for a plain Linear; False when this
    path cannot reproduce the layer (several adapters, DoRA, dropout, a bias on B, merged weights)."""
    if not hasattr(module, "lora_A"):
        return None if isinstance(module, nn.Linear) else False
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return False
    active = [name for name in getattr(module, "active_adapters", ()) if name in module.lora_A]
    if not active:
        return None
    if len(active) > 1:
        return False
    name = active[0]
    if getattr(module, "use_dora", {}).get(name, False) or not isinstance(module.lora_dropout[name], nn.Identity):
        return False
    a, b = module.lora_A[name], module.lora_B[name]
    if not isinstance(a, nn.Linear) or not isinstance(b, nn.Linear) or a.bias is not None or b.bias is not None:
        return False
    return a.weight, b.weight, float(module.scaling[name])


def _base(module: nn.Module) -> nn.Linear:
    return getattr(module, "base_layer", module)


def supports(decoder: nn.Module) -> bool:
    """True when `forward` reproduces the model's own training forward for this decoder."""
    if not fast_decoder.supports(decoder):
        return False
    for name, parameter in decoder.named_parameters():
        if parameter.requires_grad and "lora_" not in name:
            return False  # trainable base weights or norms need weight gradients: the reference path has them
    if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in decoder.modules()):
        return False
    for layer in decoder.layers[: decoder.config.num_hidden_layers]:
        for block, name in _PROJECTIONS:
            if _adapter(getattr(getattr(layer, block), name)) is False:
                return False
    return True


# ------------------------------------------------------------------------------------------ weights
class _Group:
    """One fused projection: frozen base weight and bias (concatenated over members, compute dtype) and the
    members' adapters, from which the stacked A and block-diagonal, scaled B are built per forward."""

    def __init__(self, modules: list[nn.Module], dtype: torch.dtype | None):
        bases = [_base(m) for m in modules]
        dtype = dtype or bases[0].weight.dtype
        with torch.no_grad():
            weights = [b.weight.detach() for b in bases]
            self.weight = (torch.cat(weights) if len(weights) > 1 else weights[0]).to(dtype).contiguous()
            if all(b.bias is None for b in bases):
                self.bias = None
            else:
                self.bias = torch.cat([b.bias.detach() if b.bias is not None else
                                       torch.zeros(b.weight.shape[0], device=b.weight.device) for b in bases]).to(dtype)
        self.widths = [b.weight.shape[0] for b in bases]
        self.adapters = [_adapter(m) for m in modules]
        self.dtype = dtype

    def lora(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(A (R, in), Bt (R, out)) in the compute dtype, differentiable back to peft's fp32 parameters;
        Bt carries the scale and is block-diagonal over the members. (None, None) without adapters."""
        if all(adapter is None for adapter in self.adapters):
            return None, None
        a_parts, b_parts = [], []
        for width, adapter in zip(self.widths, self.adapters):
            if adapter is None:  # a member without an adapter: an empty block keeps the column offsets
                b_parts.append(self.weight.new_zeros(0, width))
                continue
            a, b, scale = adapter
            a_parts.append(a)
            b_parts.append(b.t() * scale)
        a = torch.cat(a_parts) if len(a_parts) > 1 else a_parts[0]
        bt = torch.block_diag(*b_parts) if len(b_parts) > 1 else b_parts[0]
        return a.to(self.dtype), bt.to(self.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a, bt = self.lora()
        return _LoraLinear.apply(x, self.weight, self.bias, a, bt)


class TrainWeights:
    """Per-layer fused frozen weights of a Llama-shaped decoder in the compute dtype, with references to its
    trainable adapters. Only the frozen part is copied; it is rebuilt when a base weight is replaced."""

    def __init__(self, decoder: nn.Module, dtype: torch.dtype | None = None):
        self.key = self.state_key(decoder, dtype)
        config = decoder.config
        fast_decoder.read_decoder_shape(self, config)
        self.dtype = dtype or decoder.norm.weight.dtype
        self.layers = []
        for layer in decoder.layers[: config.num_hidden_layers]:
            attention, mlp = layer.self_attn, layer.mlp
            self.layers.append(dict(
                input_norm=layer.input_layernorm.weight.detach().to(self.dtype),
                qkv=_Group([attention.q_proj, attention.k_proj, attention.v_proj], self.dtype),
                o=_Group([attention.o_proj], self.dtype),
                post_norm=layer.post_attention_layernorm.weight.detach().to(self.dtype),
                gate_up=_Group([mlp.gate_proj, mlp.up_proj], self.dtype),
                down=_Group([mlp.down_proj], self.dtype)))
        self.final_norm = decoder.norm.weight.detach().to(self.dtype)

    @staticmethod
    def state_key(decoder: nn.Module, dtype: torch.dtype | None = None) -> tuple:
        """Changes when a frozen weight is replaced or edited, or the adapters change; not when the optimizer
        updates the adapters (they are read live every forward)."""
        parts = [dtype] + [(id(p), p._version, p.device, p.dtype) for n, p in decoder.named_parameters()
                           if "lora_" not in n]
        parts += [(id(m), fast_decoder._lora_extra_state(m)) for m in decoder.modules() if hasattr(m, "lora_A")]
        return tuple(parts)


# --------------------------------------------------------------------------------- autograd nodes
class _LoraLinear(torch.autograd.Function):
    """y = x Wᵀ + b + (x Aᵀ) Bt with W and b frozen, x (N, in), A (R, in), Bt (R, out) scaled."""

    @staticmethod
    def forward(ctx, x, weight, bias, a, bt):
        y = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
        u = None
        if a is not None:
            u = torch.mm(x, a.t())
            y.addmm_(u, bt)
        ctx.save_for_backward(x if a is not None else None, weight, a, bt, u)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, a, bt, u = ctx.saved_tensors
        dx = torch.mm(dy, weight) if ctx.needs_input_grad[0] else None
        da = dbt = None
        if a is not None:
            du = torch.mm(dy, bt.t())
            if dx is not None:
                dx.addmm_(du, a)
            da = torch.mm(du.t(), x) if ctx.needs_input_grad[3] else None
            dbt = torch.mm(u.t(), dy) if ctx.needs_input_grad[4] else None
        return dx, None, None, da, dbt


def _rms_statistics(x: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / rms(x) over the last dimension, reduced in fp32 in one pass (never materialising x**2)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    return torch.rsqrt(norm.square_().div_(x.shape[-1]).add_(eps))


class _RMSNorm(torch.autograd.Function):
    """RMSNorm with a frozen weight: y = x r w, r = 1/rms(x). Backward: with g = dy w,
    dx = r (g - x r² mean(g x)), three passes and one fp32 reduction."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = _rms_statistics(x, eps)
        ctx.save_for_backward(x, weight, rstd)
        return (x * rstd.to(x.dtype)).mul_(weight)

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        g = dy * weight
        dot = (g * x).sum(-1, keepdim=True, dtype=torch.float32)
        coefficient = (dot * rstd.pow(3)).div_(x.shape[-1]).to(x.dtype)
        dx = g.mul_(rstd.to(x.dtype)).addcmul_(x, coefficient, value=-1.0)
        return dx, None, None


def _rope_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> None:
    """out = x cos + sign * rotate_half(x) sin. sign=-1 is the transpose (the backward): rotary tables repeat
    the same frequencies in both halves, so rotate_half's transpose is rotate_half with sin negated."""
    half = x.shape[-1] // 2
    torch.mul(x, cos, out=out)
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-sign)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:], value=sign)


class _QKVRope(torch.autograd.Function):
    """Fused q/k/v product (B, L, H + 2 KV, D) -> q (B, KV, G, L, D) and k (B, KV, L, D) rotated, and v
    (B, KV, L, D): G = H / KV query heads share each key/value head. They are written into one buffer laid
    out (B, KV, G + 2, L, D), so that attention reads every group's queries, key and value as plain strided
    blocks without copies. The backward writes the three gradients into one buffer of the product's
    layout, un-rotating q and k on the way."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, heads, kv_heads):
        queries, keys, values = _qkv_views(qkv, heads, kv_heads)
        group = heads // kv_heads
        batch, length, _, dim = qkv.shape
        out = torch.empty(batch, kv_heads, group + 2, length, dim, dtype=qkv.dtype, device=qkv.device)
        _rope_into(out[:, :, :group], queries, cos, sin, 1.0)
        _rope_into(out[:, :, group], keys, cos, sin, 1.0)
        out[:, :, group + 1].copy_(values)
        ctx.save_for_backward(cos, sin)
        ctx.shape, ctx.heads, ctx.kv_heads = qkv.shape, heads, kv_heads
        return out[:, :, :group], out[:, :, group], out[:, :, group + 1]

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        reference = next(g for g in (dq, dk, dv) if g is not None)
        make = torch.zeros if dq is None or dk is None or dv is None else torch.empty
        grad = make(ctx.shape, dtype=reference.dtype, device=reference.device)
        queries, keys, values = _qkv_views(grad, ctx.heads, ctx.kv_heads)
        if dq is not None:
            _rope_into(queries, dq, cos, sin, -1.0)
        if dk is not None:
            _rope_into(keys, dk, cos, sin, -1.0)
        if dv is not None:
            values.copy_(dv)
        return grad, None, None, None, None


def _qkv_views(qkv: torch.Tensor, heads: int, kv_heads: int):
    """Views of a (B, L, H + 2 KV, D) product as q (B, KV, G, L, D), k and v (B, KV, L, D). Query head h
    belongs to key/value head h // G, as in transformers' `repeat_kv`."""
    queries = qkv[:, :, :heads].unflatten(2, (kv_heads, heads // kv_heads)).permute(0, 2, 3, 1, 4)
    keys = qkv[:, :, heads:heads + kv_heads].transpose(1, 2)
    values = qkv[:, :, heads + kv_heads:].transpose(1, 2)
    return queries, keys, values


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Causal attention with grouped KV heads, q (B, KV, G, L, D) -> (B, KV, G, L, D), as batched products
    on the matrix unit. The query heads that share a KV head are stacked into one (G L, D) block per group, so
    keys and values are never repeated (and their gradients never summed back); `mask` is the additive
    causal mask tiled to (G L, L). On CPU this ran 3x faster forward and backward than SDPA's math kernel
    (which expands the KV heads and scans for fully masked rows) and 4x faster than its flash kernel."""
    batch, kv_heads, group, length, dim = q.shape
    grouped = q.reshape(batch * kv_heads, group * length, dim)
    scores = torch.baddbmm(mask, grouped, k.reshape(batch * kv_heads, length, dim).transpose(1, 2),
                           alpha=dim ** -0.5)
    # The CPU and CUDA softmax kernels accumulate a bf16 input in fp32 already; asking for an fp32 output
    # would only add a cast pass forward and backward.
    probabilities = torch.softmax(scores, -1)
    return torch.bmm(probabilities, v.reshape(batch * kv_heads, length, dim)).view(batch, kv_heads, group, length, dim)


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up from the fused (N, 2I) product; the backward fills one (N, 2I) gradient buffer."""

    @staticmethod
    def forward(ctx, gate_up):
        width = gate_up.shape[-1] // 2
        gate, up = gate_up[:, :width], gate_up[:, width:]
        activated = F.silu(gate)
        ctx.save_for_backward(gate_up, activated)
        return activated.mul(up)

    @staticmethod
    def backward(ctx, dh):
        gate_up, activated = ctx.saved_tensors
        width = gate_up.shape[-1] // 2
        gate, up = gate_up[:, :width], gate_up[:, width:]
        grad = torch.empty_like(gate_up)
        torch.mul(dh, activated, out=grad[:, width:])
        torch.ops.aten.silu_backward.grad_input(dh * up, gate, grad_input=grad[:, :width])
        return grad


# ------------------------------------------------------------------------------------------ forward
def forward(decoder: nn.Module, weights: TrainWeights, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Final normed hidden states (B, L, width) for right-padded prompts, differentiable with respect to
    `inputs_embeds` and the LoRA parameters. Like the inference path, attention is causal with no padding
    mask: real tokens never attend to the pads that follow them, and only real tokens are read out."""
    batch, length, width = inputs_embeds.shape
    dtype = weights.dtype
    heads, kv_heads, head_dim = weights.heads, weights.kv_heads, weights.head_dim
    rows = batch * length
    with torch.autocast(inputs_embeds.device.type, enabled=False):
        hidden = inputs_embeds.to(dtype).reshape(rows, width)
        positions = torch.arange(length, device=hidden.device).unsqueeze(0)
        cos, sin = decoder.rotary_emb(hidden, positions)
        cos, sin = cos.to(dtype)[0], sin.to(dtype)[0]  # (L, head_dim): broadcasts over batch and heads
        causal = torch.full((length, length), float("-inf"), device=hidden.device).triu_(1)
        mask = causal.repeat(heads // kv_heads, 1).to(dtype)
        for layer in weights.layers:
            normed = _RMSNorm.apply(hidden, layer["input_norm"], weights.eps)
            qkv = layer["qkv"](normed).view(batch, length, heads + 2 * kv_heads, head_dim)
            q, k, v = _QKVRope.apply(qkv, cos, sin, heads, kv_heads)
            attended = _causal_attention(q, k, v, mask)
            attended = attended.permute(0, 3, 1, 2, 4).reshape(rows, heads * head_dim)
            hidden = hidden + layer["o"](attended)
            normed = _RMSNorm.apply(hidden, layer["post_norm"], weights.eps)
            hidden = hidden + layer["down"](_SwiGLU.apply(layer["gate_up"](normed)))
        hidden = _RMSNorm.apply(hidden, weights.final_norm, weights.eps)
    return hidden.view(batch, length, width)

