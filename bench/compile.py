"""torch.compile of the encode path: the offline default (micl+late) encoding 64 sample notes at batch 32, warm
(vision features cached), eager against compiled (core/models/fast_decoder.compiled_forward), and what the
compilation costs: the first compiled encode minus a compiled one (`compile_s`, an empty inductor cache), and
the same in a second process that finds the first one's kernels in the cache (`compile_cached_s`). Each
process is a subprocess so that nothing compiled stays in memory between the two."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, sample_notes, timed


def worker(out: str, repeats: int) -> None:
    import torch

    from bench.encode import encode_flops, load_default_model, per_note_fixed_flops
    from core.runtime import configure_threads

    configure_threads()
    model = load_default_model()
    notes = sample_notes(64)
    fixed, vision = per_note_fixed_flops(model)
    flops = encode_flops(model, notes, fixed, vision, cold=False)
    with torch.inference_mode():
        eager_vectors = model.encode(notes, batch_size=32)  # also fills the vision feature cache: warm from here
    eager = timed(lambda: model.encode(notes, batch_size=32), repeats=repeats)
    model.compile_inference = True
    started = time.perf_counter()
    compiled_vectors = model.encode(notes, batch_size=32)
    first = time.perf_counter() - started
    compiled = timed(lambda: model.encode(notes, batch_size=32), repeats=repeats, warmup=0)
    result = {"notes": len(notes), "batch": 32, "eager_s": eager["best"], "eager_s_median": eager["median"],
              "compiled_s": compiled["best"], "compiled_s_median": compiled["median"], "first_compiled_s": first,
              "compile_s": first - compiled["best"], "flops": flops,
              "min_cosine_compiled_vs_eager": float((eager_vectors * compiled_vectors).sum(1).min()),
              "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}
    Path(out).write_text(json.dumps(result))


def _process(cache: Path, repeats: int, timeout: int) -> dict:
    out = cache.parent / f"result-{time.time_ns()}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    process = subprocess.run([sys.executable, "-m", "bench.compile", str(out), str(repeats)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=timeout)
    if process.returncode != 0 or not out.exists():
        return {"error": (process.stderr or process.stdout).strip().splitlines()[-1:] or ["no output"]}
    return json.loads(out.read_text())


def run(peak_flops: float, quick: bool = False) -> dict:
    repeats = 2 if quick else 3
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as folder:
        cache = Path(folder) / "inductor"
        first = _process(cache, repeats, timeout=3600)
        if "error" in first:
            return first
        second = _process(cache, repeats, timeout=3600)
    result = {"cold_cache": first, "warm_cache": second, "compile_s": first["compile_s"],
              "compile_cached_s": second.get("compile_s"),
              "encode_mfu_eager_b32": first["flops"] / first["eager_s"] / peak_flops,
              "encode_mfu_compiled": first["flops"] / first["compiled_s"] / peak_flops,
              "compiled_speedup": first["eager_s"] / first["compiled_s"]}
    if "compiled_s" in second:  # two processes' figures: the better of each, as every other figure here
        result["encode_mfu_eager_b32"] = first["flops"] / min(first["eager_s"], second["eager_s"]) / peak_flops
        result["encode_mfu_compiled"] = first["flops"] / min(first["compiled_s"], second["compiled_s"]) / peak_flops
    return result


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]))
