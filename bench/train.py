"""Training: the 'cpu' preset step (LoRA r=16, 16 pairs = 32 notes per step, micl+late) on the bundled sample,
the lean LoRA path (core/models/lora_train.py) against the peft + transformers path on the same batch, and
a short end-to-end run of the engine's trainer. Each part runs in its own subprocess so that its peak
resident memory is its own.

- step A/B: one model, one batch of 16 pairs from the trainer's own schedule, vision features precomputed;
  a step is forward, loss, backward, gradient clipping and AdamW, as the trainer does it. The two paths
  alternate (peft, lean, peft, lean, ...) after one untimed step each, so that a change in the machine's
  load hits both; the ratio is taken per alternation and its median reported.
- end to end: `core.train.trainer.train` for a few steps with evaluation and checkpoints at half-way and at
  the end: pairs per second over the whole call (model load, data, logging, evaluation included), the
  median step time and padding from events.jsonl.

FLOPs per step, counted for the batch's 32 notes at their real prompt lengths:
- LLM, frozen bf16 base + LoRA: forward 2PT, backward through the frozen weights for the activations 2PT
  (no weight gradients; LoRA's rank-16 products ignored) = 2 x forward; attention 3 x forward.
- connector + fusion + head (trainable): 3 x forward.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, SAMPLE


def _prepare(workspace: str):
    from core.data.store import Store

    store = Store(workspace)
    store.import_dataset("sample", str(SAMPLE / "notes.csv"), str(SAMPLE / "pairs.csv"), str(SAMPLE / "images"))
    return store


def step_flops(model, notes) -> float:
    from bench.common import decoder_flops
    from bench.encode import per_note_fixed_flops

    config = model.llm.config
    lengths = [len(model.prompts.build(n).ids) for n in notes]
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    attention = sum(4 * heads * head_dim * n * (n + 1) / 2 for n in lengths) * config.num_hidden_layers
    linear = decoder_flops(config, lengths) - attention
    fixed, _ = per_note_fixed_flops(model)
    return 2 * linear + 3 * attention + 3 * fixed * len(notes)


def ab_worker(workspace: str, repeats: int, out: str) -> None:
    """Alternating timed steps of the two paths on one batch."""
    import resource

    import torch

    from core.runtime import configure_threads
    from core.train.loss import ContrastiveLoss
    from core.train.trainer import BatchSchedule, preset_configs
    from core.models.note_encoder import NoteEncoder

    configure_threads()
    store = _prepare(workspace)
    notes_by_id = {n.note_id: n for n in store.notes("sample")}
    pairs = BatchSchedule(store.pairs("sample"), 16, seed=0).batch(0)
    notes = [notes_by_id[a] for a, _ in pairs] + [notes_by_id[b] for _, b in pairs]
    _, model_config = preset_configs("cpu", "micl+late")
    torch.manual_seed(0)
    model = NoteEncoder(model_config)
    batch = model.collate(notes)
    with torch.no_grad():
        vision, has_image = model.image_features(batch["images"])
        model(batch, vision=vision, has_image=has_image)  # late fusion's calibration, as the trainer does first
    model.train()
    loss_module = ContrastiveLoss(3.0, True, 9.0, 1.0)
    parameters = [p for p in model.parameters() if p.requires_grad] + [loss_module.temperature]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)

    def step(lean: bool) -> float:
        model.lean_training = lean
        started = time.perf_counter()
        output = model(batch, vision=vision, has_image=has_image)
        loss = loss_module(output.embedding, output.visual_embedding)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    step(False), step(True)
    times = {"peft": [], "lean": []}
    for _ in range(repeats):
        times["peft"].append(step(False))
        times["lean"].append(step(True))
    ratios = [p / q for p, q in zip(times["peft"], times["lean"])]
    # The same alternation on one thread, timed in CPU time (time.thread_time): on a shared 2-core machine a
    # busy neighbour stalls every parallel region of a 2-thread step, and CPU time of a single thread is
    # robust to that. This is the A/B figure to trust when the CPU pressure is high.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu = {"peft": [], "lean": []}
    for _ in range(max(1, repeats // 2)):
        for name, lean in (("peft", False), ("lean", True)):
            started = time.thread_time()
            step(lean)
            cpu[name].append(time.thread_time() - started)
    # The bf16 matrix peak of one thread, in CPU time too: MFU as one thread's step CPU time against it is the
    # utilisation figure that a loaded machine does not distort (a wall-clock peak taken under load is low, and
    # a wall-clock MFU against it comes out above 100%).
    a, b = torch.randn(2048, 2048, dtype=torch.bfloat16), torch.randn(2048, 2048, dtype=torch.bfloat16)
    a @ b
    peak_times = []
    for _ in range(3):
        started = time.thread_time()
        a @ b
        peak_times.append(time.thread_time() - started)
    peak_one_thread = 2 * 2048 ** 3 / min(peak_times)
    torch.set_num_threads(threads)
    cached = _grad_cache_timing(model, loss_module, optimizer, parameters, store, notes_by_id, repeats)
    mask = batch["attention_mask"]
    result = {"repeats": repeats, "notes_per_step": len(notes), "step_s_peft_all": times["peft"],
              "step_s_lean_all": times["lean"], "step_s_peft": statistics.median(times["peft"]),
              "step_s": statistics.median(times["lean"]), "step_s_best": min(times["lean"]),
              "step_s_peft_best": min(times["peft"]), "speedup_vs_peft": statistics.median(ratios),
              "speedup_vs_peft_all": ratios, "prompt_tokens_mean": float(mask.sum()) / len(notes),
              "one_thread_cpu_s_peft": cpu["peft"], "one_thread_cpu_s_lean": cpu["lean"],
              "peak_bf16_tflops_one_thread_cpu_time": peak_one_thread / 1e12,
              "speedup_vs_peft_one_thread_cpu_time": statistics.median(
                  p / q for p, q in zip(cpu["peft"], cpu["lean"])),
              "padding_fraction": 1.0 - float(mask.float().mean()), "step_flops": step_flops(model, notes),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **cached}
    Path(out).write_text(json.dumps(result))


def _grad_cache_timing(model, loss_module, optimizer, parameters, store, notes_by_id, repeats: int) -> dict:
    """The price of gradient caching (core/train/grad_cache.py): a step of 32 pairs (62 in-batch negatives
    per note) in chunks of 16, at one 16-pair chunk's activation memory, against plain lean steps of 16
    pairs (30 negatives), alternating; seconds per pair of each and their ratio. The cached step pays a
    second forward of every chunk, so about 4/3 per pair is the expected price."""
    import torch

    from core.train.grad_cache import cached_contrastive_step
    from core.train.trainer import BatchSchedule

    model.lean_training = True
    wide = BatchSchedule(store.pairs("sample"), 32, seed=0).batch(0)
    narrow = wide[:16]

    def encode(module, chunk):
        chunk_notes = [notes_by_id[a] for a, _ in chunk] + [notes_by_id[b] for _, b in chunk]
        batch = module.collate(chunk_notes)
        with torch.no_grad():  # the frozen tower's features, cached per image after the first call
            vision, has_image = module.image_features(batch["images"])
        return module(batch, vision=vision, has_image=has_image)

    def finish() -> None:
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def plain_step() -> float:
        started = time.perf_counter()
        output = encode(model, narrow)
        loss_module(output.embedding, output.visual_embedding)["loss"].backward()
        finish()
        return time.perf_counter() - started

    def cached_step() -> float:
        started = time.perf_counter()
        cached_contrastive_step(model, loss_module, wide, encode, 16)
        finish()
        return time.perf_counter() - started

    plain_step(), cached_step()
    plain, wide_times = [], []
    for _ in range(max(1, repeats // 2)):
        plain.append(plain_step())
        wide_times.append(cached_step())
    per_pair_plain = statistics.median(plain) / len(narrow)
    per_pair_cached = statistics.median(wide_times) / len(wide)
    return {"grad_cache_pairs": len(wide), "grad_cache_chunk": 16, "grad_cache_step_s_all": wide_times,
            "grad_cache_plain_step_s_all": plain, "grad_cache_s_per_pair": per_pair_cached,
            "plain_s_per_pair": per_pair_plain, "grad_cache_cost_per_pair": per_pair_cached / per_pair_plain}


def run_worker(workspace: str, steps: int, out: str) -> None:
    """The engine's trainer end to end, timed from the call (model load included)."""
    import resource

    from core.runs import read_events
    from core.train.trainer import train

    _prepare(workspace)
    half = max(1, steps // 2)
    started = time.perf_counter()
    summary = train(workspace, "sample", "micl+late", "bench", preset="cpu", steps=steps, eval_every=half,
                    checkpoint_every=half, device="cpu")
    elapsed = time.perf_counter() - started
    events = read_events(Path(workspace) / "runs" / "bench")
    rows = [e for e in events if "step_s" in e]
    result = {"steps": steps, "status": summary.get("status"), "wall_s": elapsed, "pairs_per_s": steps * 16 / elapsed,
              "step_s_median": statistics.median(e["step_s"] for e in rows[1:] or rows),
              "padding_fraction_mean": statistics.mean(e.get("padding_fraction", 0.0) for e in rows),
              "evaluations": sum(1 for e in events if e.get("event") == "eval"),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(out).write_text(json.dumps(result))


def _subprocess(kind: str, argument: int, timeout: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        out = Path(folder) / "result.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        process = subprocess.run([sys.executable, "-m", "bench.train", kind, str(Path(folder) / "ws"), str(argument),
                                  str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if process.returncode != 0 or not out.exists():
            return {"error": (process.stderr or process.stdout).strip().splitlines()[-1:] or ["no output"]}
        return json.loads(out.read_text())


def run(peak_flops: float, quick: bool = False) -> dict:
    from bench.common import cpu_pressure

    result = {"cpu_pressure_avg10_at_start": cpu_pressure()}
    ab = _subprocess("ab", 2 if quick else 4, timeout=1800)
    result.update(ab)
    if "step_s" in ab:
        result["notes_per_s"] = ab["notes_per_step"] / ab["step_s_best"]
        result["notes_per_s_median"] = ab["notes_per_step"] / ab["step_s"]
        result["train_mfu"] = ab["step_flops"] / ab["step_s_best"] / peak_flops
        result["train_mfu_median"] = ab["step_flops"] / ab["step_s"] / peak_flops
        result["train_mfu_peft"] = ab["step_flops"] / ab["step_s_peft_best"] / peak_flops
        peak_one_thread = ab["peak_bf16_tflops_one_thread_cpu_time"] * 1e12
        result["train_mfu_one_thread_cpu"] = ab["step_flops"] / min(ab["one_thread_cpu_s_lean"]) / peak_one_thread
        result["train_mfu_one_thread_cpu_peft"] = ab["step_flops"] / min(ab["one_thread_cpu_s_peft"]) / peak_one_thread
    end_to_end = _subprocess("run", 4 if quick else 10, timeout=3600)
    result["end_to_end"] = end_to_end
    result["cpu_pressure_avg10_at_end"] = cpu_pressure()
    return result


if __name__ == "__main__":
    kind, workspace, argument, out = sys.argv[1:5]
    (ab_worker if kind == "ab" else run_worker)(workspace, int(argument), out)
