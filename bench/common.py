"""Shared pieces of the benchmarks: timing, machine description, sample notes, FLOP counting.

Timing on a shared machine: every figure is the best (minimum) or the median of several repeats, as named;
the best is the closest estimate of what the hardware does when nothing else runs, the median what a
user sees. `cpu_pressure()` reads /proc/pressure/cpu so a results file says how busy the machine was.
"""
from __future__ import annotations

import csv
import random
import statistics
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"


def timed(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> dict:
    """Wall-clock seconds of fn(): best, median and all repeats (after `warmup` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"best": min(times), "median": statistics.median(times), "all": times}


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI), in percent."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(dict(part.split("=") for part in line.split()[1:])["avg10"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def machine() -> dict:
    from core.runtime import describe_machine

    return {**describe_machine(), "cpu_pressure_avg10_at_start": cpu_pressure()}


def sample_notes(count: int, seed: int = 0) -> list:
    """`count` real notes from data/sample (with image paths), repeated with a tag if more are asked;
    synthesised notes with drawn images when the sample is missing."""
    from core.data.schema import Note

    notes_file = SAMPLE / "notes.csv"
    if notes_file.exists():
        rows = list(csv.DictReader(notes_file.open(encoding="utf-8")))
        notes = []
        for i in range(count):
            row = dict(rows[i % len(rows)])
            row["image"] = str(SAMPLE / "images" / row["image"]) if row.get("image") else None
            if i >= len(rows):
                row["note_id"] = f"{row['note_id']}#{i // len(rows)}"
            notes.append(Note.from_dict(row))
        return notes
    return synthetic_notes(count, seed)


_WORDS = ("red blue green old small bright quiet bird cat dog tree house car star flower music food sport map "
          "people animal icon sign arrow heart sun moon water fire cloud garden city river mountain winter "
          "summer kitchen recipe travel guide simple drawing outline sketch pattern vintage modern").split()


def synthetic_notes(count: int, seed: int = 0, image_size: int = 160) -> list:
    """Notes with English-looking text and a drawn PIL image each (different pixels per note)."""
    from PIL import Image, ImageDraw

    from core.data.schema import Note

    rng = random.Random(seed)
    notes = []
    for i in range(count):
        picture = Image.new("RGB", (image_size, image_size), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(picture)
        for _ in range(6):
            box = sorted(rng.randrange(image_size) for _ in range(2)), sorted(rng.randrange(image_size) for _ in range(2))
            draw.ellipse((box[0][0], box[1][0], box[0][1], box[1][1]), fill=tuple(rng.randrange(256) for _ in range(3)))
        title = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 5))).title()
        content = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 30))) + "."
        topics = [rng.choice(_WORDS) for _ in range(rng.randint(0, 5))]
        notes.append(Note(note_id=f"synthetic-{i}", title=title, content=content, topics=topics, image=picture))
    return notes


# ------------------------------------------------------------------------------------------ FLOPs
def linear_params(module) -> int:
    """Weights of every nn.Linear inside (the matrix-product parameters; embeddings and norms excluded)."""
    from torch import nn

    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear)
               and not any(s in type(m).__name__.lower() for s in ("lora",)))


def decoder_flops(config, lengths: list[int]) -> float:
    """Forward FLOPs of a Llama-shaped decoder over prompts of the given real lengths.

    2 x (q, k, v, o, gate, up, down weights) per token, plus causal attention: a token at position t does
    2 x 2 x heads x head_dim x (t + 1) for QK^T and AV, per layer. No LM head (the model never runs one)."""
    width, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or width // heads
    per_layer = (width * heads * head_dim + 2 * width * kv_heads * head_dim + heads * head_dim * width
                 + 3 * width * config.intermediate_size)
    tokens = sum(lengths)
    attention = sum(4 * heads * head_dim * (n * (n + 1) / 2) for n in lengths) * layers
    return 2.0 * per_layer * layers * tokens + attention


def hooked_flops(module, fn: Callable[[], object]) -> float:
    """FLOPs of every nn.Linear and nn.Conv2d inside `module` that fn() runs, counted from their outputs:
    2 x output elements x (inputs per output). Attention products are not included (callers add them)."""
    from torch import nn

    total = [0.0]

    def hook(layer, inputs, output):
        if isinstance(layer, nn.Linear):
            total[0] += 2.0 * output.numel() * layer.in_features
        else:
            kh, kw = layer.kernel_size
            total[0] += 2.0 * output.numel() * (layer.in_channels // layer.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        fn()
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
