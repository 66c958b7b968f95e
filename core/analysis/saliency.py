"""Saliency of attention, per layer: how visual neglect is measured.

What is computed, exactly, for each batch of B pairs (2B notes: the first notes, then their partners):

1. The LLM runs with the analysis attention (capture.py): eager attention whose pre-softmax scores
   s = q k^T / sqrt(d) are multiplied, in every layer, by a tensor M of ones with requires_grad
   (the causal/padding mask is added after the multiplier, so masked keys stay masked).
2. The in-batch contrastive loss of core/train/loss.py is computed on the embeddings: normalised vectors,
   scores E E^T with the diagonal masked, times exp(3.0), cross-entropy to each row's pair partner; under
   mICL L = (9 L(n_m) + 1 L(n_v)) / 10. `torch.autograd.grad` gives dL/dM for every layer (parameter
   .grad fields are left untouched, so this is safe on a model that is being trained).
3. Per layer l and note n: I_l[n, q, k] = | sum_h M * dL/dM |[n, h, q, k] = | sum_h s_h[q,k] dL/ds_h[q,k] |,
   the "attention x gradient" of the reference with the pre-softmax score as the attention quantity
   (M = 1, so the multiplier's gradient times the multiplier equals score x gradient of the score). The
   diagonal q = k is zeroed. `multiplier="post_softmax"` puts M on the softmax weights A instead, which
   gives |sum_h A_h dL/dA_h| (the label-words-anchors form), for comparison.
4. With f the final token (the n_m read-out) and V the image span (basic: the visual tokens; mICL: from the
   first visual token through the <IMG_EMB> slot, i.e. including the instruction after the image and the
   slot itself), over the note's real (unpadded) positions only:
       S_v = mean of I[f, k] over k in V
       S_t = mean of I[f, k] over the other keys k < f, not in V
       S_o = mean of I[q, k] over every other causal pair k < q, q != f (the diagonal is excluded, not
             counted as zero)
   and, splitting the image span in two (under mICL the slot and its instruction can carry the whole rise of
   S_v while the visual tokens themselves get no more attention than under `basic`):
       S_visual = mean of I[f, k] over the visual tokens alone (the connector's outputs)
       S_slot   = mean of I[f, k] over the rest of the span: the instruction after the image and the
                  <IMG_EMB> slot (NaN without mICL: there is no such token)
   The values are averaged over the notes of a batch, then over batches.

A variant with no image tokens (text, late) has S_v = NaN: there is nothing to measure, which is not the
same as a measured zero.

`mask_image_tokens=True` sets the attention mask to 0 on the image span (every query then gives those keys
exactly zero weight) while still treating them as real positions: S_v is then exactly 0, the control
that shows the measure reads what the LLM can see.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core.analysis.capture import MULTIPLIER_PLACES, analysis_attention
from core.data.schema import Note
from core.errors import WorkbenchError
from core.models.prompts import IMAGE_TOKEN, SLOT_TOKEN

REFERENCE_LOGIT_SCALE = math.exp(3.0)
MICL_WEIGHTS = (9.0, 1.0)  # w_m : w_v


def pair_contrastive_loss(embeddings: torch.Tensor, scale: float = REFERENCE_LOGIT_SCALE) -> torch.Tensor:
    """In-batch loss for 2B embeddings laid out as [first notes of B pairs; their partners]: every row's
    target is its partner; every other note of the batch, from either side, is a negative."""
    count = embeddings.shape[0]
    if count % 2 or count < 4:
        raise ValueError("the loss needs an even number of embeddings from at least 2 pairs")
    half = count // 2
    vectors = F.normalize(embeddings.float(), dim=-1)
    scores = vectors @ vectors.T
    scores = scores.masked_fill(torch.eye(count, dtype=torch.bool, device=scores.device), float("-inf"))
    targets = torch.cat([torch.arange(half, count), torch.arange(0, half)]).to(scores.device)
    return F.cross_entropy(scores * scale, targets)


def note_loss(output, scale: float = REFERENCE_LOGIT_SCALE) -> torch.Tensor:
    """The training loss for one forward output: n_m alone, or 9:1 with n_v under mICL."""
    loss = pair_contrastive_loss(output.embedding, scale)
    if output.visual_embedding is not None:
        w_m, w_v = MICL_WEIGHTS
        loss = (w_m * loss + w_v * pair_contrastive_loss(output.visual_embedding, scale)) / (w_m + w_v)
    return loss


def image_span(input_ids: torch.Tensor) -> torch.Tensor:
    """(N, T) bool: the visual tokens; under mICL everything from the first visual token through the slot."""
    span = input_ids == IMAGE_TOKEN
    slot = input_ids == SLOT_TOKEN
    if slot.any():
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        big = input_ids.shape[1]
        first = torch.where(span, positions, torch.full_like(positions, big)).min(dim=1, keepdim=True).values
        last = torch.where(slot, positions, torch.full_like(positions, -1)).max(dim=1, keepdim=True).values
        span = span | ((positions >= first) & (positions <= last))
    return span


MEASURES = ("S_v", "S_t", "S_o", "S_visual", "S_slot")


def _layer_values(saliency: torch.Tensor, valid: torch.Tensor, span: torch.Tensor,
                  final: torch.Tensor, visual: torch.Tensor | None = None) -> np.ndarray:
    """(N, 5) S_v, S_t, S_o, S_visual, S_slot for one layer's (N, T, T) saliency; `visual` marks the visual
    tokens inside the span (default: the whole span)."""
    count, length, _ = saliency.shape
    visual = span if visual is None else visual & span
    positions = torch.arange(length, device=saliency.device)
    causal = positions[None, :] < positions[:, None]  # key strictly before query: the diagonal is excluded
    values = np.full((count, len(MEASURES)), np.nan)
    for n in range(count):
        f = int(final[n])
        real = valid[n]
        row = saliency[n, f]
        before = real & (positions < f)
        keys_v = before & span[n]
        keys_t = before & ~span[n]
        keys_visual = before & visual[n]
        keys_slot = before & span[n] & ~visual[n]
        pairs = causal & real[:, None] & real[None, :]
        pairs[f] = False
        for column, keys in ((0, keys_v), (1, keys_t), (3, keys_visual), (4, keys_slot)):
            if keys.any():
                values[n, column] = row[keys].mean().item()
        if pairs.any():
            values[n, 2] = saliency[n][pairs].mean().item()
    return values


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN (a note without image tokens has no S_v); all-NaN columns stay NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0)


def batch_saliency(model, notes: Sequence[Note], multiplier: str = "pre_softmax", mask_image_tokens: bool = False,
                   scale: float = REFERENCE_LOGIT_SCALE) -> np.ndarray:
    """(layers, 5) S_v, S_t, S_o, S_visual, S_slot for one batch of notes laid out as [firsts; partners]."""
    batch = model.collate(list(notes))
    valid = batch["attention_mask"].bool()
    span = image_span(batch["input_ids"])
    visual = batch["input_ids"] == IMAGE_TOKEN
    if mask_image_tokens:
        batch = dict(batch)
        batch["attention_mask"] = batch["attention_mask"].masked_fill(span, 0)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), analysis_attention(model.llm, multiplier=multiplier) as recorder:
            output = model(batch)
            loss = note_loss(output, scale)
            if not recorder.multipliers:
                raise WorkbenchError("the LLM's attention did not run through the analysis attention; "
                                     "this architecture does not dispatch through transformers' AttentionInterface")
            gradients = torch.autograd.grad(loss, recorder.multipliers, allow_unused=True)
    finally:
        model.train(was_training)
    device = recorder.multipliers[0].device
    valid, span, final, visual = (valid.to(device), span.to(device), batch["last_index"].to(device),
                                  visual.to(device))
    rows = []
    for multiplier_tensor, gradient in zip(recorder.multipliers, gradients):
        if gradient is None:
            gradient = torch.zeros_like(multiplier_tensor)
        saliency = (multiplier_tensor.detach() * gradient).sum(dim=1).abs()  # (N, T, T), heads summed
        saliency.diagonal(dim1=-2, dim2=-1).zero_()
        rows.append(_nanmean_rows(_layer_values(saliency, valid, span, final, visual)))
    return np.array(rows)


def saliency_by_layer(model, pairs_of_notes: Sequence[tuple[Note, Note]], batch_pairs: int = 4,
                      max_batches: int | None = None, progress: Callable[[int, int], None] | None = None, *,
                      multiplier: str = "pre_softmax", mask_image_tokens: bool = False,
                      scale: float = REFERENCE_LOGIT_SCALE) -> pd.DataFrame:
    """S_v, S_t, S_o, S_visual, S_slot per LLM layer, averaged over batches of `batch_pairs` related pairs (see
    the module doc for exactly what is computed). Columns: layer (0 = first decoder layer), the five
    measures, n_batches.

    A batch needs at least 2 pairs (with one pair the loss has no negative and every gradient is zero), so a
    trailing batch of a single pair is dropped. progress(done, total) is called after each batch."""
    if multiplier not in MULTIPLIER_PLACES:
        raise WorkbenchError(f"multiplier must be one of {', '.join(MULTIPLIER_PLACES)}, not {multiplier!r}")
    if batch_pairs < 2:
        raise WorkbenchError("saliency needs at least 2 pairs per batch (the loss needs a negative)")
    pairs = list(pairs_of_notes)
    chunks = [pairs[start:start + batch_pairs] for start in range(0, len(pairs), batch_pairs)]
    chunks = [chunk for chunk in chunks if len(chunk) >= 2]
    if max_batches is not None:
        chunks = chunks[:max_batches]
    if not chunks:
        raise WorkbenchError("saliency needs at least 2 related pairs of notes")
    per_batch = []
    for done, chunk in enumerate(chunks, start=1):
        notes = [first for first, _ in chunk] + [second for _, second in chunk]
        per_batch.append(batch_saliency(model, notes, multiplier=multiplier, mask_image_tokens=mask_image_tokens,
                                        scale=scale))
        if progress is not None:
            progress(done, len(chunks))
    # Ignoring NaN across batches too: S_slot of a batch whose slot fell outside every note stays out.
    mean = _nanmean_rows(np.stack(per_batch)) if len(per_batch) > 1 else per_batch[0]
    frame = pd.DataFrame({"layer": np.arange(mean.shape[0]),
                          **{name: mean[:, i] for i, name in enumerate(MEASURES)}, "n_batches": len(chunks)})
    # Per batch as well (batches x layers x measures, as lists): batches of the same pairs under two variants
    # are paired observations, so a difference in saliency can be tested like a difference in recall.
    frame.attrs.update(multiplier=multiplier, mask_image_tokens=mask_image_tokens, variant=getattr(model, "variant", None),
                       measures=list(MEASURES), per_batch=np.stack(per_batch).tolist())
    return frame
