"""The reproduction's record of each finished run, kept with its results (RESULTS_DIR/runs/<run>.json).

A reproduction's workspace holds the weights and lives outside the work tree, where it may be laid anew
between sittings; a full table takes many sittings on a CPU. What the table needs of a finished run is
small: its evaluation on every split and modality, each query's ranks (the paired tests' input) and its
training summary. Each finished run writes that here, so a later sitting whose workspace lost the run
reuses the record instead of training the run again.

A record is only reused for the same evaluation: the same training budget and preset values, and the same
held-out notes, pairs and texts (`evaluation_digest`). A dataset rebuilt differently gives another digest,
and its runs are trained again instead of being compared with queries they were never asked.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

RECORDS_FOLDER = "runs"
RECORD_VERSION = 1
BUDGET_KEYS = ("dataset", "steps", "preset", "batch_pairs")


def evaluation_digest(store, dataset: str, split) -> str:
    """What an evaluation's figures depend on in the data: the held-out notes (ids, texts, categories and
    image files, which are content-addressed), the test pairs, and the evaluation's version."""
    from core.service import EVAL_VERSION

    notes = store.notes(dataset, split.test_note_ids)
    described = [[n.note_id, n.title, n.content, list(n.topics), n.category,
                  Path(n.image).name if isinstance(n.image, (str, Path)) else None] for n in notes]
    payload = [EVAL_VERSION, described, [list(pair) for pair in split.test_pairs],
               sorted(split.distractor_note_ids)]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:20]


def budget_of(plan) -> dict:
    """What a run was trained under: the table's budget and what its preset set (a preset whose values change
    between sittings makes another recipe under the same name)."""
    from core.train.presets import get_preset

    preset = get_preset(plan.preset)
    settings = json.loads(json.dumps({"train": dict(preset.train), "model": dict(preset.model)}, sort_keys=True))
    return {"dataset": plan.train_dataset, "steps": plan.steps, "preset": plan.preset, "batch_pairs": plan.batch_pairs,
            "preset_settings": settings}


def record_path(plan, run: str) -> Path:
    from core.workspace import check_run_name

    return plan.condition_dir / RECORDS_FOLDER / f"{check_run_name(run)}.json"


def write_record(plan, run: str, variant: str, seed: int, table: dict, per_query: dict, training: dict | None,
                 digest: str) -> Path:
    """Save one finished run's evaluation. `per_query`: modality -> {"rank", "category_rank",
    "query_subsets"}; the subsets are the same for every modality and are stored once."""
    subsets: dict = {}
    ranks: dict = {}
    for modality, entry in per_query.items():
        entry = dict(entry)
        subsets = entry.pop("query_subsets", None) or subsets
        ranks[modality] = entry
    record = {"version": RECORD_VERSION, "run": run, "variant": variant, "seed": seed, "budget": budget_of(plan),
              "evaluation_digest": digest, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S"), "training": training,
              "table": table, "per_query": ranks, "query_subsets": subsets}
    path = record_path(plan, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(record))
    scratch.replace(path)  # a record is whole or absent: an interrupted write never looks finished
    return path


def read_record(plan, run: str, digest: str) -> tuple[dict | None, str]:
    """(record, "") when a usable record of `run` exists, else (None, why not)."""
    path = record_path(plan, run)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "no record"
    except (OSError, json.JSONDecodeError) as problem:
        return None, f"its record is unreadable ({type(problem).__name__})"
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        return None, "its record has another format"
    if record.get("run") != run:
        return None, "its record names another run"
    if record.get("budget") != budget_of(plan):
        return None, f"its record was trained under another budget ({record.get('budget')})"
    if record.get("evaluation_digest") != digest:
        return None, "its record was evaluated on other held-out notes or pairs (the dataset was built differently)"
    if not isinstance(record.get("table"), dict) or not isinstance(record.get("per_query"), dict):
        return None, "its record is incomplete"
    return record, ""


def record_ranks(record: dict) -> dict:
    """modality -> per-query entry as the reproduction's evaluation returns it (with the query subsets)."""
    return {modality: {**entry, "query_subsets": record.get("query_subsets", {})}
            for modality, entry in record["per_query"].items()}
