"""A small learnable dataset for the engine tests: notes in a few categories, each with its own words and
image colour, buried in shared filler words; related pairs join notes of one category."""
from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image

CATEGORIES = {
    "birds": ("bird", (220, 30, 30)),
    "cars": ("car", (30, 30, 220)),
    "trees": ("tree", (30, 200, 30)),
    "stars": ("star", (230, 210, 20)),
    "dogs": ("dog", (120, 60, 10)),
    "flowers": ("flower", (230, 60, 200)),
    "houses": ("house", (90, 90, 90)),
    "suns": ("sun", (250, 150, 0)),
}
FILLER = "the a an of to in and is for on with as by at from this that sign arrow icon map people".split()


def write_learnable_dataset(folder: Path, per_category: int = 8, partners: int = 2, seed: int = 0,
                            pairs: bool = True) -> tuple[Path, Path]:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rows, by_category = [], {}
    for category, (word, colour) in CATEGORIES.items():
        for i in range(per_category):
            note_id = f"{category}-{i}"
            jitter = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour)
            Image.new("RGB", (16, 16), jitter).save(folder / "images" / f"{note_id}.png")
            filler = " ".join(rng.choice(FILLER) for _ in range(6))
            title = f"{word} {rng.choice(FILLER)}"
            content = f"{filler} {word} {' '.join(rng.choice(FILLER) for _ in range(3))}"
            rows.append([note_id, title, content, f"{note_id}.png", f"{category}@"])
            by_category.setdefault(category, []).append(note_id)
    order = list(range(len(rows)))
    rng.shuffle(order)
    notes_csv = folder / "notes.csv"
    with open(notes_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["note_id", "title", "content", "image", "category"])
        writer.writerows(rows[i] for i in order)
    pairs_csv = folder / "pairs.csv"
    pair_rows = []
    for ids in by_category.values():
        for i, note_id in enumerate(ids):
            for step in range(1, partners + 1):
                pair_rows.append([note_id, ids[(i + step) % len(ids)]])
    rng.shuffle(pair_rows)
    with open(pairs_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["note_id_1", "note_id_2"])
        writer.writerows(pair_rows if pairs else [])
    return notes_csv, pairs_csv


def import_learnable(workspace_dir: Path, name: str = "toy", **kwargs) -> str:
    from core.data.store import Store

    source = Path(workspace_dir).parent / f"{name}-source"
    notes_csv, pairs_csv = write_learnable_dataset(source, **kwargs)
    Store(workspace_dir).import_dataset(name, notes_csv, pairs_csv, source / "images")
    return name
