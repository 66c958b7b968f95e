"""Device and precision, chosen in one place so every code path runs the same on CPU and CUDA."""
from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch

from core.errors import WorkbenchError


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def configure_threads() -> None:
    """Use every core for intra-op work; torch's default can be lower inside containers. Under torchrun or
    accelerate launch (WORLD_SIZE > 1) the processes share the cores: the launcher's OMP_NUM_THREADS stands."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    cores = usable_cores()
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)


def describe_machine() -> dict:
    """What a measurement ran on: CPU model and bf16 features, cores, GPU, library versions."""
    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        flags = next((line for line in lines if line.startswith("flags")), "")
    except OSError:
        pass
    info = {"cpu": cpu, "cores": usable_cores(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "python": platform.python_version()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def resolve_device(requested: str | None = None) -> torch.device:
    """`auto`/None picks CUDA when present. Asking for CUDA without a GPU is a user error, not a crash."""
    name = (requested or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise WorkbenchError(f"device {requested!r} was requested but no CUDA GPU is available; use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise WorkbenchError(f"unknown device {requested!r}; use auto, cpu or cuda")


def frozen_weight_dtype(device: torch.device) -> torch.dtype:
    """Frozen backbone weights live in bf16: on this CPU's AMX units and on GPUs bf16 matmuls are ~8x fp32."""
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast for the backbone; trainable heads cast back to fp32 explicitly where it matters."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def training_attention(device: torch.device):
    """Attention kernel for a forward that will be back-propagated. On CPU, torch's flash-attention backward
    ran ~2x slower than the plain math path (whose backward is batched matrix products on AMX) and took a
    third of a LoRA training step (measured, bench/README.md), so training forwards use the math path there.
    The switch is process-wide while the forward runs; inference elsewhere stays correct, only slower."""
    if device.type != "cpu" or not torch.is_grad_enabled():
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def use_compile_cache(folder: str | os.PathLike) -> Path:
    """Keep inductor's on-disk caches (FX graphs and compiled kernels) in `folder`, normally the workspace's
    cache/inductor: a second run of the same shapes then starts in seconds instead of compiling for minutes.
    Set before the first compilation. A TORCHINDUCTOR_CACHE_DIR the user chose wins; inductor's default
    does not (inductor writes its default into the environment the first time it looks)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path.resolve())
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
