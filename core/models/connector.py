"""Connectors from a frozen vision tower's tokens to a fixed number of LLM input embeddings.

`QFormer` follows BLIP-2's shape as NoteLLM-2 uses it: learnable query tokens that self-attend, cross-attend
to the image tokens (pooled + patches) every `cross_attention_every` layers, and pass through a feed-forward
block; a 2-layer GELU MLP then maps them into the LLM's width. It is randomly initialised (the paper uses 6
layers of width 768; the default here is small enough to train on a CPU).

The output is layer-normed and multiplied by a learnable scale that starts at the RMS of the LLM's token
embeddings, so visual tokens enter the LLM with the spread of ordinary tokens from the first step (a
measured cause of unstable starts otherwise).

`MLPConnector` is the plain alternative: one LLM token per vision token (pooled + patches).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention that can return its weights (the analysis reads cross-attention over patches)."""

    def __init__(self, width: int, heads: int, context_width: int | None = None):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(context_width or width, width)
        self.value = nn.Linear(context_width or width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, return_weights: bool = False):
        batch, length, width = x.shape
        split = lambda t: t.view(batch, -1, self.heads, width // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        if return_weights:
            weights = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
            mixed = weights @ v
        else:
            weights, mixed = None, F.scaled_dot_product_attention(q, k, v)
        return self.out(mixed.transpose(1, 2).reshape(batch, length, width)), weights


class QFormerLayer(nn.Module):
    def __init__(self, width: int, heads: int, vision_width: int, cross: bool):
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attention = Attention(width, heads)
        self.cross_norm = nn.LayerNorm(width) if cross else None
        self.cross_attention = Attention(width, heads, vision_width) if cross else None
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, queries, image_tokens, return_weights=False):
        normed = self.self_norm(queries)
        queries = queries + self.self_attention(normed, normed)[0]
        weights = None
        if self.cross_attention is not None:
            update, weights = self.cross_attention(self.cross_norm(queries), image_tokens, return_weights)
            queries = queries + update
        queries = queries + self.ffn(self.ffn_norm(queries))
        return queries, weights


class ScaledOutput(nn.Module):
    """LayerNorm without affine, times a learnable scalar that starts at the token embeddings' RMS."""

    def __init__(self, width: int, initial_scale: float):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(initial_scale)))
        self.width = width

    def forward(self, x):
        return F.layer_norm(x, (self.width,)) * self.scale


class QFormer(nn.Module):
    def __init__(self, vision_width: int, llm_width: int, num_queries: int = 16, width: int = 384,
                 layers: int = 2, heads: int = 6, cross_attention_every: int = 2, embedding_rms: float = 1.0):
        super().__init__()
        self.num_tokens = num_queries
        self.queries = nn.Parameter(torch.randn(1, num_queries, width) * 0.02)
        self.vision_norm = nn.LayerNorm(vision_width)
        self.layers = nn.ModuleList(
            QFormerLayer(width, heads, vision_width, cross=(index % cross_attention_every == 0))
            for index in range(layers))
        self.final_norm = nn.LayerNorm(width)
        self.projection = nn.Sequential(nn.Linear(width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))
        self.output = ScaledOutput(llm_width, embedding_rms)

    def forward(self, pooled: torch.Tensor, patches: torch.Tensor, return_attention: bool = False):
        """(N, num_queries, llm_width); with return_attention also the cross-attention weights of each
        cross layer, (N, heads, num_queries, 1 + patches), key 0 being the pooled token."""
        image_tokens = self.vision_norm(torch.cat([pooled.unsqueeze(1), patches], dim=1))
        queries = self.queries.expand(pooled.shape[0], -1, -1)
        attention = []
        for layer in self.layers:
            queries, weights = layer(queries, image_tokens, return_attention)
            if weights is not None:
                attention.append(weights)
        visual = self.output(self.projection(self.final_norm(queries)))
        return (visual, attention) if return_attention else visual


class MLPConnector(nn.Module):
    """One LLM token per image token (pooled first, then the patch grid)."""

    def __init__(self, vision_width: int, llm_width: int, num_patches: int, embedding_rms: float = 1.0):
        super().__init__()
        self.num_tokens = num_patches + 1
        self.vision_norm = nn.LayerNorm(vision_width)
        self.projection = nn.Sequential(nn.Linear(vision_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))
        self.output = ScaledOutput(llm_width, embedding_rms)

    def forward(self, pooled, patches, return_attention: bool = False):
        tokens = self.vision_norm(torch.cat([pooled.unsqueeze(1), patches], dim=1))
        visual = self.output(self.projection(tokens))
        return (visual, []) if return_attention else visual
