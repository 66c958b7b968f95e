"""The NoteLLM-2 contrastive loss, as a small module.

Batch layout per process: the first notes of the B local pairs, then their partners (2B rows). Embeddings
are gathered from every process; only this process's shard keeps its gradient (the others arrive as
constants), so each process computes the *whole* global loss and back-propagates into its own rows.
Scores S = exp(t) * E Eᵀ with the diagonal masked; each row's target is its pair partner, and every other
note of the global batch, from either side, is a negative.

Gradient bookkeeping across processes: every process computes the same global loss L, but only through
its own shard. DDP averages gradients over P processes, so the trainer back-propagates P * L to make
the parameter gradient equal to one process's gradient on the same global batch. The temperature is not
inside DDP (it lives here), and its gradient is the same full dL/dt on every process, so the trainer
divides it by P again (see `Trainer`).

Under mICL, L = (w_m L(n_m) + w_v L(n_v)) / (w_m + w_v), with w_m : w_v = 9 : 1 by default.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def gather_with_local_grad(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate every process's rows; this process's rows are the original tensor (with gradient).

    Returns (global rows, offset of the local shard). Shards must have the same shape on every process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    shards = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(shards, local.detach().contiguous())
    shards[rank] = local
    return torch.cat(shards), rank * local.shape[0]


def pair_targets(num_rows: int, shard_rows: int) -> torch.Tensor:
    """Target column for every row of a gathered batch made of shards laid out [firsts; partners]."""
    half = shard_rows // 2
    rows = torch.arange(num_rows)
    shard_start = rows - rows % shard_rows
    within = rows % shard_rows
    return shard_start + (within + half) % shard_rows


class ContrastiveLoss(nn.Module):
    def __init__(self, temperature_init: float = 3.0, learn_temperature: bool = True,
                 note_weight: float = 9.0, visual_weight: float = 1.0):
        super().__init__()
        # t is a log-scale: logits are exp(t) * cosine. t = 3 gives a scale of about 20.
        self.temperature = nn.Parameter(torch.tensor(float(temperature_init)), requires_grad=learn_temperature)
        self.note_weight = float(note_weight)
        self.visual_weight = float(visual_weight)

    @property
    def scale(self) -> float:
        return math.exp(self.temperature.item())

    def single(self, embeddings: torch.Tensor) -> torch.Tensor:
        """InfoNCE over one set of L2-normalised embeddings (this process's [firsts; partners] shard)."""
        if embeddings.shape[0] % 2:
            raise ValueError("the batch must hold whole pairs: [first notes; partners]")
        local_rows = embeddings.shape[0]
        gathered, _ = gather_with_local_grad(embeddings.float())
        scores = gathered @ gathered.T * self.temperature.exp()
        eye = torch.eye(gathered.shape[0], dtype=torch.bool, device=scores.device)
        scores = scores.masked_fill(eye, float("-inf"))
        targets = pair_targets(gathered.shape[0], local_rows).to(scores.device)
        return F.cross_entropy(scores, targets)

    def forward(self, embedding: torch.Tensor, visual_embedding: torch.Tensor | None = None) -> dict:
        """{"loss", "note_loss", "visual_loss" (when n_v is given)}."""
        note_loss = self.single(embedding)
        out = {"note_loss": note_loss, "loss": note_loss}
        if visual_embedding is not None and self.visual_weight > 0:
            visual_loss = self.single(visual_embedding)
            total = self.note_weight + self.visual_weight
            out["visual_loss"] = visual_loss
            out["loss"] = (self.note_weight * note_loss + self.visual_weight * visual_loss) / total
        return out
