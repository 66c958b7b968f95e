"""Training checkpoints without pickle, written atomically so a kill -9 never leaves a torn one.

A checkpoint is a folder RUN/checkpoints/step-<N>/ with
  model.safetensors + config.json   NoteEncoder.save_pretrained layout
  optimizer.safetensors             every tensor of the optimizer state, keyed "<param index>.<name>"
  loss.safetensors                  the loss module (the learnable temperature)
  rng.safetensors                   torch CPU (and CUDA) generator states as uint8 tensors
  state.json                        step, scheduler state, optimizer param groups, non-tensor state, python/numpy RNG
It is written under a temporary name and renamed into place; then RUN/checkpoints/latest.json is replaced
atomically to point at it, and older folders are removed. Resuming reads latest.json, so a process killed
at any moment leaves either the previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from core.errors import WorkbenchError

LATEST = "latest.json"


def write_json_atomic(path: Path, data) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(data, indent=2))
    os.replace(staging, path)


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["plain"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_tensors() -> dict:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    return tensors


def save_checkpoint(run_dir: Path, step: int, model, loss_module, optimizer, scheduler, extra: dict,
                    keep: int = 1) -> Path:
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    staging = folder / f".step-{step:08d}.{os.getpid()}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    model.save_pretrained(staging)
    opt_tensors, opt_meta = _optimizer_to_files(optimizer)
    save_file(opt_tensors, str(staging / "optimizer.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in loss_module.state_dict().items()},
              str(staging / "loss.safetensors"))
    save_file(_rng_tensors(), str(staging / "rng.safetensors"))
    py_state = random.getstate()
    np_state = np.random.get_state()
    state = {"step": step, "scheduler": scheduler.state_dict(), "optimizer": opt_meta, **extra,
             "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
             "numpy_rng": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    (staging / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    write_json_atomic(folder / LATEST, {"step": step, "folder": final.name})
    # Older checkpoints go only after the pointer moved on.
    for old in sorted(p for p in folder.glob("step-*") if p.is_dir() and p != final)[:-keep or None]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    folder = pointer.parent / json.loads(pointer.read_text())["folder"]
    return folder if folder.exists() else None


def load_checkpoint(folder: Path, model, loss_module, optimizer, scheduler) -> dict:
    """Restore everything in place; returns state.json (with "step")."""
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WorkbenchError(f"checkpoint {folder} is unreadable ({error})") from None
    model.load_weights(folder / "model.safetensors")
    loss_module.load_state_dict(load_file(str(folder / "loss.safetensors")))
    _optimizer_from_files(optimizer, load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return state
