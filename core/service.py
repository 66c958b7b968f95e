"""Plain functions the Gradio app (and scripts) call: variants, encoders, vectors, neighbours, evaluation,
training jobs. Nothing here imports gradio; long work takes `progress(done, total)` callbacks, and training
and bulk encoding run in worker processes (core/jobs.py).

Names: a *run* is a folder WORKSPACE/runs/<run>/ written by the trainer; the zero-shot baselines are
`zs-text`, `zs-image`, `zs-concat`, `zs-llm`. Both kinds are "variants" to the viewer and behave alike.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Callable, Sequence

import numpy as np

from core.baselines import COMPOSED_BASELINES, ZERO_SHOT, composed_encode
from core.data.schema import Note
from core import encoders
from core.errors import WorkbenchError
from core.runs import RunStore
from core.workspace import Workspace, check_dataset_name, check_run_name

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
MODALITIES = ("both", "image", "text")


def _ws(workspace) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)


def _store(workspace):
    from core.data.store import Store

    return Store(_ws(workspace))


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise WorkbenchError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")


# --------------------------------------------------------------------------------------------- runs
def run_info(workspace, run: str) -> dict:
    """run.json of a run (read by the run store) with `has_weights`."""
    record = RunStore(_ws(workspace)).get(run)
    return {**record.info, "has_weights": record.has_weights}


def _run_folder(workspace, name: str):
    """An existing run's folder through the workspace's one resolver (names that are paths are refused)."""
    return RunStore(_ws(workspace)).existing(name)


def list_runs(workspace) -> list[dict]:
    return [{**record.info, "has_weights": record.has_weights} for record in RunStore(_ws(workspace)).all_runs()]


def encoder_fingerprint(workspace, name: str) -> str:
    """Changes whenever the encoder's weights do (a run's latest checkpoint), so caches keyed on it stay true."""
    return encoders.fingerprint(workspace, name)


def list_variants(workspace, dataset: str) -> list[dict]:
    """Finished runs trained on `dataset` first (newest first), then the four zero-shot baselines."""
    rows = []
    for info in sorted(list_runs(workspace), key=lambda r: r.get("updated_at", ""), reverse=True):
        if info.get("dataset") != dataset or info.get("status") != "finished" or not info["has_weights"]:
            continue
        rows.append({"name": info["run"], "kind": "run", "variant": info.get("variant"), "dataset": dataset,
                     "steps": info.get("step"), "status": info.get("status")})
    for name in ZERO_SHOT:
        rows.append({"name": name, "kind": "zero-shot", "variant": name, "dataset": dataset, "steps": 0,
                     "status": "ready"})
    return rows


# ----------------------------------------------------------------------------------------- encoders
def load_encoder(workspace, name: str):
    """A run's NoteEncoder or a zero-shot encoder, from the process's one pool (core.encoders)."""
    return encoders.load(workspace, name)


def encode(workspace, name: str, notes: Sequence[Note], modality: str = "both", batch_size: int = 32,
           progress: Progress | None = None) -> np.ndarray:
    """Vectors of arbitrary notes (not cached): e.g. one note composed in the UI."""
    from core.encode import encode_notes

    _check_modality(modality)
    encoder = load_encoder(workspace, name)
    with encoders.lock(workspace, name):
        return encode_notes(encoder, list(notes), batch_size, modality, progress, workspace_root=_ws(workspace).root)


def vector_cache(workspace, name: str, dataset: str, modality: str):
    """Where an encoder's vectors of a dataset live: WORKSPACE/indexes/<encoder>/<dataset>/<modality>.*"""
    from core.encode import VectorCache

    ws = _ws(workspace)
    fingerprint = encoder_fingerprint(ws, name)  # resolves the name before it becomes part of a path
    return VectorCache(ws.indexes_dir / name / check_dataset_name(dataset), modality, fingerprint)


def note_vectors(workspace, name: str, dataset: str, notes: Sequence[Note], modality: str = "both",
                 progress: Progress | None = None) -> np.ndarray:
    """Vectors of some of a dataset's notes through the on-disk cache (only missing notes are encoded)."""
    _check_modality(modality)
    cache = vector_cache(workspace, name, dataset, modality)
    if name in COMPOSED_BASELINES:  # from the parts' caches, never encoding a part again
        return cache.vectors(list(notes), composed_encode(
            name, lambda part, todo, p: note_vectors(workspace, part, dataset, todo, modality, p)), progress)
    return cache.vectors(list(notes), lambda todo, p: encode(workspace, name, todo, modality, progress=p), progress)


def dataset_vectors(workspace, name: str, dataset: str, modality: str = "both",
                    progress: Progress | None = None) -> tuple[list[str], np.ndarray]:
    """(note ids in store order, (N, d) float32) for a whole dataset; cached on disk."""
    notes = _store(workspace).notes(dataset)
    return [n.note_id for n in notes], note_vectors(workspace, name, dataset, notes, modality, progress)


# ---------------------------------------------------------------------------------------- neighbours
def neighbours(workspace, name: str, dataset: str, note_id: str | None = None, query: Note | None = None,
              k: int = 10, modality: str = "both", seed: int = 0) -> list[dict]:
    """The k nearest notes of a stored note (`note_id`) or of a composed `query` Note (image: PIL or path).

    Each row {"note_id", "score", "rank"} (rank from 1); the query note itself is excluded; equal scores are
    ordered by a seeded random order, not by position."""
    from core.index import VectorIndex

    if (note_id is None) == (query is None):
        raise WorkbenchError("give either note_id or query")
    if k < 1:
        raise WorkbenchError("k must be at least 1")
    ids, matrix = dataset_vectors(workspace, name, dataset, modality)
    if query is not None:
        if isinstance(query, dict):
            query = Note.from_dict(query)
        vector = encode(workspace, name, [query], modality)[0]
        exclude = {query.note_id} if query.note_id else set()
    else:
        note_id = str(note_id)
        if note_id not in ids:
            raise WorkbenchError(f"dataset '{dataset}' has no note '{note_id}'")
        vector = matrix[ids.index(note_id)]
        exclude = {note_id}
    index = VectorIndex(ids, matrix, seed=seed)
    hits = index.search(vector[None], k, exclude=[exclude])[0]
    return [{"note_id": hit, "score": score, "rank": rank} for rank, (hit, score) in enumerate(hits, 1)]


# ---------------------------------------------------------------------------------------- evaluation
def split_for(workspace, name: str, dataset: str):
    """The test split a variant is evaluated on: a run's own (seed, fractions) when it was trained on this
    dataset, otherwise the default (seed 0, 20%, default distractors), so zero-shot and trained variants share
    one split. A run that recorded no distractor fraction trained before distractors were held out: its
    split holds none (its training saw those notes)."""
    from core.data.splits import DEFAULT_DISTRACTOR_FRACTION, split_dataset

    seed, fraction, distractors = 0, 0.2, DEFAULT_DISTRACTOR_FRACTION
    if name not in ZERO_SHOT:
        info = run_info(workspace, name)
        if info.get("dataset") == dataset:
            seed, fraction = info.get("split_seed", 0), info.get("test_fraction", 0.2)
            distractors = info.get("distractor_fraction", 0.0)
    return split_dataset(_store(workspace), dataset, fraction, seed, distractors)


# Part of the evaluation cache's key: results written by an earlier evaluation (targets-only pool, no
# per-query ranks) are computed again instead of reused.
EVAL_VERSION = 2


def _dataset_fingerprint(store, dataset: str) -> str:
    info = store.dataset(dataset)
    pairs = store.pairs(dataset)
    digest = hashlib.sha1(json.dumps([info.notes, info.created_at, pairs]).encode()).hexdigest()[:16]
    return digest


def evaluate_variant(workspace, name: str, dataset: str, split: str = "test", modality: str = "both",
                     seed: int = 0, progress: Progress | None = None, use_cache: bool = True,
                     protocol: str = "distractors") -> dict:
    """The evaluation JSON (protocol in core.evaluate): recall@k, its bootstrap interval, chance levels,
    category hit@k, length subsets, per-query ranks. `protocol`: the candidate pool (core.evaluate)."""
    from core.evaluate import PROTOCOLS, evaluate_vectors

    if protocol not in PROTOCOLS:
        raise WorkbenchError(f"unknown protocol {protocol!r}; choose {' or '.join(PROTOCOLS)}")
    _check_modality(modality)
    if split not in ("test", "train", "all"):
        raise WorkbenchError(f"unknown split {split!r}; choose test, train or all")
    ws = _ws(workspace)
    store = _store(ws)
    fingerprint = encoder_fingerprint(ws, name)  # resolves the name before it becomes part of a path
    data_fp = _dataset_fingerprint(store, dataset)
    cache_file = ws.indexes_dir / name / check_dataset_name(dataset) / f"eval-{split}-{modality}-{int(seed)}-{protocol}.json"
    if use_cache and cache_file.exists():
        try:
            cached = json.loads(cache_file.read_text())
            if cached.get("_fingerprint") == [fingerprint, data_fp, EVAL_VERSION]:
                cached.pop("_fingerprint")
                return cached
        except (OSError, json.JSONDecodeError):  # torn or unreadable: computed again and rewritten below
            log.info("evaluation cache %s unreadable; computing it again", cache_file.name)
    parts = split_for(ws, name, dataset)
    if split == "test":
        pairs, note_ids, subsets = parts.test_pairs, parts.test_note_ids, parts.subsets()
    elif split == "train":
        pairs, note_ids, subsets = parts.train_pairs, [n for n in parts.train_note_ids], {}
    else:
        pairs = store.pairs(dataset)
        note_ids, subsets = list(dict.fromkeys(n for pair in pairs for n in pair)), {}
    if not pairs:
        raise WorkbenchError(f"dataset '{dataset}' has no {split} pairs to evaluate on")
    if split != "test":  # only the held-out side has distractors; elsewhere a pairless note is no candidate
        paired = {n for pair in pairs for n in pair}
        note_ids = [n for n in note_ids if n in paired]
    notes = store.notes(dataset, note_ids)
    vectors = note_vectors(ws, name, dataset, notes, modality, progress)
    result = {"variant": name, "dataset": dataset, "split": split, "modality": modality,
              "split_seed": parts.seed, "test_fraction": parts.test_fraction,
              "distractor_fraction": parts.distractor_fraction}
    result.update(evaluate_vectors(([n.note_id for n in notes], vectors), pairs, subsets,
                                   [n.note_id for n in notes], seed=seed,
                                   categories={n.note_id: n.category for n in notes}, protocol=protocol))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    from core.train.checkpoint import write_json_atomic

    write_json_atomic(cache_file, {**result, "_fingerprint": [fingerprint, data_fp, EVAL_VERSION]})
    log.info("evaluated %s on %s (%s, %s): recall@10 %s over %s queries", name, dataset, split, modality,
             result.get("recall@10"), result.get("queries"))
    return result


def evaluation_table(workspace, dataset: str, names: Sequence[str], modalities=MODALITIES, split: str = "test",
                     seed: int = 0, progress: Progress | None = None):
    """pandas DataFrame: one row per variant x subset x modality, columns queries, recall@k, and the Recall@10
    interval on the "all" rows. Each cell comes from the per-(checkpoint, dataset) evaluation cache."""
    import pandas as pd

    rows = []
    for name in names:
        for modality in modalities:
            result = evaluate_variant(workspace, name, dataset, split, modality, seed, progress)
            recalls = {k: v for k, v in result.items()
                       if k.startswith(("recall@", "category_hit@")) and not k.endswith("ci95")}
            low, high = result.get("recall@10_ci95", [None, None])
            rows.append({"variant": name, "split": "all", "modality": modality, "queries": result["queries"],
                         "pool": result["pool"], **recalls, "recall@10_low": low, "recall@10_high": high})
            for subset, figures in result.get("subsets", {}).items():
                rows.append({"variant": name, "split": subset, "modality": modality, "pool": result["pool"],
                             **figures})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- jobs
def training_spec(dataset: str, variant: str, run: str, preset: str, steps: int, overrides: dict) -> str:
    """The one description of a training request a worker receives: JSON, so values keep their types and a
    value that looks like a flag ("--resume" typed as a model name) stays a value."""
    return json.dumps({"dataset": dataset, "variant": variant, "run": run, "preset": preset, "steps": int(steps),
                       "overrides": {key: value for key, value in overrides.items() if value is not None}})


def start_training(workspace, dataset: str, variant: str, run: str, preset: str = "cpu", steps: int = 100,
                   **overrides) -> str:
    """Check the request now (clear errors in the UI), then train in a worker process; returns the job id."""
    from core.jobs import start_job
    from core.train.trainer import Trainer, preset_configs

    ws = _ws(workspace)
    check_run_name(run)  # before the trainer's own check: "-h" or "--resume" would be read as flags
    Trainer.check_run_name(run)
    train_defaults, _ = preset_configs(preset, variant, **overrides)
    store = _store(ws)
    if not store.has_dataset(dataset):
        store.notes(dataset)  # raises the store's "unknown dataset" message
    if not store.pairs(dataset):
        raise WorkbenchError(f"dataset '{dataset}' has no pairs: training needs related pairs (pairs.csv)")
    folder = ws.run_dir(run)
    if folder.exists() and any(folder.iterdir()):
        raise WorkbenchError(f"run '{run}' exists already; resume it or choose another name")
    argv = ["train", "--run", run, "--spec", training_spec(dataset, variant, run, preset, steps, overrides)]
    return start_job(ws, "train", argv, run=run, dataset=dataset, total=int(steps))


def resume_training(workspace, run: str) -> str:
    from core.jobs import start_job

    info = run_info(workspace, run)
    if info.get("status") == "finished":
        raise WorkbenchError(f"run '{run}' is finished already")
    return start_job(workspace, "train", ["train", "--run", run, "--resume"], run=run,
                     dataset=info.get("dataset", ""), total=int(info["train"]["steps"]),
                     step=int(info.get("step") or 0))


def start_encoding(workspace, name: str, dataset: str, modality: str = "both") -> str:
    """Encode a whole dataset into the vector cache in a worker process."""
    from core.jobs import start_job

    _check_modality(modality)
    encoder_fingerprint(workspace, name)
    _store(workspace).notes(dataset)[:0]
    return start_job(workspace, "encode", ["encode", "--run", name, "--dataset", dataset, "--modality", modality],
                     run=name, dataset=dataset)


def cancel_job(workspace, job_id: str) -> None:
    from core.jobs import cancel

    cancel(workspace, job_id)


def job_status(workspace, job_id: str) -> dict:
    from core.jobs import get_job

    return get_job(workspace, job_id)


def list_jobs(workspace) -> list[dict]:
    from core.jobs import list_jobs as _list

    return _list(workspace)


def delete_dataset(workspace, name: str, confirm: str | None = None) -> None:
    """Delete a dataset, its images no other dataset uses, and every cached vector or evaluation of it.
    Refused while a job works on it (the worker would read notes that vanish) and, when `confirm` is given,
    unless it repeats the name. Runs trained on it are kept: they are models, not data."""
    import shutil

    ws = _ws(workspace)
    if confirm is not None and confirm.strip() != name:
        raise WorkbenchError(f"type the dataset name '{name}' to confirm; nothing was deleted")
    from core.jobs import ACTIVE

    busy = [job for job in list_jobs(ws) if job.get("dataset") == name and job.get("state") in ACTIVE]
    if busy:
        raise WorkbenchError(f"dataset '{name}' is in use by {busy[0]['kind']} job {busy[0]['job_id']} "
                             f"(run '{busy[0].get('run')}'); stop it first. Nothing was deleted")
    _store(ws).delete_dataset(name)
    if ws.indexes_dir.exists():  # vectors and evaluations (indexes/<encoder>/<name>), maps (indexes/_maps/<name>)
        for cached in ws.indexes_dir.glob(f"*/{check_dataset_name(name)}"):
            shutil.rmtree(cached, ignore_errors=True)


def run_events(workspace, run: str) -> list[dict]:
    return RunStore(_ws(workspace)).events(run)


def install_checkpoints(workspace, directory=None) -> list[str]:
    """Shipped demo checkpoints (assets/checkpoints/<variant>/) as finished runs of the workspace."""
    return RunStore(_ws(workspace)).install_shipped(directory)
