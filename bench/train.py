"""Training step throughput and MFU through the engine's trainer (core/train/trainer.py), 'cpu' preset
(LoRA r=16, 16 pairs = 32 notes per step, micl+late), on the bundled sample, in a subprocess so that its
peak resident memory is its own.

The vision features of every sample image are computed into the workspace's feature cache first, so the
timed steps are training steps, not first-time image encoding (that is the encode benchmark's cold figure).
The first step is dropped (one-off allocations); the figure is the median and the best of the rest.

FLOPs per step, counted for 32 notes at the sample's mean real prompt length:
- LLM, frozen bf16 base + LoRA: forward 2PT, backward through the frozen weights for the activations 2PT
  (no weight gradients; LoRA's rank-16 products ignored) = 2 x forward; attention 3 x forward.
- connector + fusion + head (trainable): 3 x forward.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, SAMPLE


def worker(workspace: str, steps: int, out: str) -> None:
    import resource
    import statistics

    import torch

    from core.data.store import Store
    from core.encode import feature_cache_for
    from core.models.note_encoder import NoteEncoder
    from core.train.trainer import read_events, train, preset_configs
    from bench.common import decoder_flops
    from bench.encode import per_note_fixed_flops

    store = Store(workspace)
    store.import_dataset("sample", str(SAMPLE / "notes.csv"), str(SAMPLE / "pairs.csv"), str(SAMPLE / "images"))
    notes = store.notes("sample")
    _, model_config = preset_configs("cpu", "micl+late")
    model = NoteEncoder(model_config).eval()
    with torch.inference_mode():
        cache = feature_cache_for(model, Path(workspace))
        images = [n.image for n in notes]
        for start in range(0, len(images), 32):
            cache(images[start:start + 32])
    lengths = [len(model.prompts.build(n).ids) for n in notes]
    fixed, _ = per_note_fixed_flops(model)
    config = model.llm.config
    del model
    summary = train(workspace, "sample", "micl+late", "bench", preset="cpu", steps=steps, eval_every=0,
                    checkpoint_every=10_000, device="cpu")
    events = [e for e in read_events(Path(workspace) / "runs" / "bench") if "step_s" in e]
    step_times = [e["step_s"] for e in events][1:] or [e["step_s"] for e in events]
    notes_per_step = 2 * 16
    mean_length = sum(lengths) / len(lengths)
    forward_llm = decoder_flops(config, [round(mean_length)] * notes_per_step)
    attention = forward_llm - decoder_flops(config, [1] * notes_per_step) * round(mean_length)
    step_flops = 2 * forward_llm + max(attention, 0.0) + 3 * fixed * notes_per_step
    result = {"steps": steps, "status": summary.get("status"), "step_s_median": statistics.median(step_times),
              "step_s_best": min(step_times), "notes_per_step": notes_per_step, "mean_prompt_tokens": mean_length,
              "step_flops": step_flops, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(out).write_text(json.dumps(result))


def run(peak_flops: float, quick: bool = False) -> dict:
    steps = 3 if quick else 6
    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        out = Path(folder) / "result.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        process = subprocess.run([sys.executable, "-m", "bench.train", str(Path(folder) / "ws"), str(steps), str(out)],
                                 cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if process.returncode != 0 or not out.exists():
            return {"error": (process.stderr or process.stdout).strip().splitlines()[-1:] or ["no output"]}
        result = json.loads(out.read_text())
    result["notes_per_s"] = result["notes_per_step"] / result["step_s_best"]
    result["notes_per_s_median"] = result["notes_per_step"] / result["step_s_median"]
    result["train_mfu"] = result["step_flops"] / result["step_s_best"] / peak_flops
    result["train_mfu_median"] = result["step_flops"] / result["step_s_median"] / peak_flops
    return result


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]), sys.argv[3])
