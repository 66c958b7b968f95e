"""Gradient caching for the contrastive loss: the in-batch negatives of a large batch at the activation
memory of a small chunk of it.

The loss couples every note of a batch to every other, so splitting a batch into micro-batches (the
trainer's grad_accum) also splits its negatives. But the loss reaches the parameters only through the
embeddings, so its gradient factors as a sum over rows of (dL/de_i) (de_i/dθ). A cached step computes it in
three passes over chunks of C pairs:

    (a) encode every chunk, keeping no activations, and assemble the batch's embeddings;
    (b) compute the full-batch loss on detached copies of them and back-propagate it to the embeddings
        (and to the learnable temperature, whose gradient is complete after this pass);
    (c) encode each chunk again, keeping its activations, and back-propagate the cached embedding
        gradients into the parameters; the chunks' gradients add up to the full batch's.

Under mICL both n_m's and n_v's embeddings get their cached gradients. The parameter gradients equal those
of one full-batch backward up to floating-point order; peak activation memory is one chunk's; the price is
a second forward of the whole batch.

Exactness needs pass (c) to recompute the embeddings of pass (a), so pass (a) is the training forward, not
an inference one:
- same code path: the model picks its training forward (the lean LoRA path of core/models/lora_train.py)
  by `torch.is_grad_enabled()`, while its no-grad path folds LoRA into bf16 weights, another function. Pass
  (a) therefore runs in grad mode and discards every tensor autograd would save for a backward, so it holds
  no more memory than a no-grad pass;
- same random numbers: the RNG state is saved before each chunk in (a) and restored before it in (c), so
  any dropout draws the same masks. Afterwards the generators stand where one pass over the chunks leaves
  them;
- no batch-dependent state: late fusion's image scale and the state offset calibrate on the first batch
  they see, which here would be a chunk. A model that still needs calibration is refused: calibrate on a
  full batch first, as the trainer does.

Gradients go through plain autograd, not `accelerator.backward`: valid for one process or DDP without a
loss scaler (the trainer's mixed_precision="no"; bf16 autocast lives inside the model), not for an fp16
GradScaler or DeepSpeed.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn


@dataclass
class CachedStep:
    losses: dict[str, torch.Tensor]  # the loss module's dict ("loss", "note_loss", "visual_loss"), detached
    gate: float | None  # mean late-fusion gate z of n_m over the batch, as the trainer logs it
    # Largest |embedding of (c) - embedding of (a)| over the batch: 0 when (c) reproduced (a) exactly; nan
    # when the loss was not finite and nothing was back-propagated.
    recompute_error: float


def chunk_bounds(count: int, chunk: int) -> list[tuple[int, int]]:
    """(start, stop) pair ranges of consecutive chunks of `chunk` pairs; the last may be shorter."""
    if chunk < 1:
        raise ValueError(f"a gradient-cache chunk holds at least one pair, not {chunk}")
    return [(start, min(start + chunk, count)) for start in range(0, count, chunk)]


def chunk_rows(start: int, stop: int, count: int) -> torch.Tensor:
    """Rows of the batch layout [first notes; partners] (2 * count rows) that the chunk of pairs
    [start, stop) produces, in the chunk's own layout [its first notes; their partners]."""
    return torch.cat([torch.arange(start, stop), torch.arange(count + start, count + stop)])


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _discard(tensor: torch.Tensor) -> None:
    return None


def _unreachable(packed) -> torch.Tensor:
    raise RuntimeError("pass (a) of a gradient-cached step keeps no activations: it cannot be back-propagated")


def _assemble(parts: list[torch.Tensor], bounds: list[tuple[int, int]]) -> torch.Tensor:
    """Chunk outputs, each [its first notes; their partners], into the batch layout [first notes; partners]."""
    sizes = [stop - start for start, stop in bounds]
    firsts = [part[:size] for part, size in zip(parts, sizes)]
    partners = [part[size:] for part, size in zip(parts, sizes)]
    return torch.cat(firsts + partners)


def cached_contrastive_step(model: nn.Module, loss_module: nn.Module, pairs: Sequence,
                            forward: Callable[[nn.Module, list], object], chunk: int, *, loss_scale: float = 1.0,
                            no_sync: Callable[[], ContextManager] | None = None) -> CachedStep:
    """Forward and backward of one batch of pairs under the full-batch contrastive loss, `chunk` pairs at
    a time (passes (a)-(c) of the module docstring). Gradients accumulate into `.grad` like `backward()`.

    model: the module that trains, DDP-wrapped or not (pass (a) runs its `.module`, outside DDP).
    pairs: this process's pairs; only sliced and handed to `forward`.
    forward(module, pairs) -> NoteEncoderOutput of those pairs laid out [first notes; partners]; called
        twice per chunk (passes (a) and (c)).
    loss_scale: multiplies the loss before back-propagation (the trainer's processes / grad_accum).
    no_sync: a context manager factory that suspends DDP's all-reduce; it wraps every chunk of pass (c)
        but the last, so the gradients are reduced once.

    When the loss is not finite, nothing is back-propagated: the returned loss tells."""
    pairs = list(pairs)
    module = getattr(model, "module", model)
    if getattr(module, "needs_calibration", False):
        raise ValueError("the model still calibrates on the first batch it sees (late fusion, state offset), "
                         "which a cached step would make a chunk: run one full batch without gradients first")
    bounds = chunk_bounds(len(pairs), chunk)
    if not bounds:
        raise ValueError("a gradient-cached step needs at least one pair")
    device = next(module.parameters()).device

    # (a) The training forward of every chunk, with nothing saved for a backward.
    states, notes, visuals = [], [], []
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_discard, _unreachable):
        for start, stop in bounds:
            states.append(_rng_state(device))
            output = forward(module, pairs[start:stop])
            notes.append(output.embedding.detach())
            visuals.append(None if output.visual_embedding is None else output.visual_embedding.detach())
            del output
    embedding = _assemble(notes, bounds).requires_grad_(True)
    visual = None if visuals[0] is None else _assemble(visuals, bounds).requires_grad_(True)

    # (b) The full-batch loss on the detached embeddings: their gradients, and the temperature's.
    with torch.enable_grad():
        losses = loss_module(embedding, visual)
    detached = {key: value.detach() for key, value in losses.items()}
    if not bool(torch.isfinite(detached["loss"])):
        return CachedStep(detached, None, float("nan"))
    (losses["loss"] * loss_scale).backward()
    cached = [(embedding.detach(), embedding.grad)]
    if visual is not None:
        cached.append((visual.detach(), visual.grad))  # None when the loss does not use n_v (w_v = 0)

    # (c) Each chunk again, with activations, back-propagating its rows of the cached gradients.
    error, gate_sum, gate_count = 0.0, 0.0, 0
    for index, (start, stop) in enumerate(bounds):
        rows = chunk_rows(start, stop, len(pairs)).to(embedding.device)
        last = index == len(bounds) - 1
        with (no_sync() if no_sync is not None and not last else contextlib.nullcontext()), torch.enable_grad():
            _set_rng_state(states[index], device)
            output = forward(model, pairs[start:stop])
            produced = [output.embedding, output.visual_embedding][:len(cached)]
            tensors, grads = [], []
            for tensor, (values, grad) in zip(produced, cached):
                error = max(error, (tensor.detach() - values[rows]).abs().max().item())
                if grad is not None:
                    tensors.append(tensor)
                    grads.append(grad[rows].to(tensor.dtype))
            torch.autograd.backward(tensors, grads)
        if output.gate is not None:
            gate_sum += output.gate.detach().float().sum().item()
            gate_count += output.gate.numel()
        del output, produced, tensors
    return CachedStep(detached, gate_sum / gate_count if gate_count else None, error)
