"""The workbench: one object between a user interface (the Gradio app, the CLI, a notebook) and the library.

A `Workbench` owns one workspace and everything that lives in it: the note store, the run store, the
background jobs, and a pool of loaded encoders and search indexes. It answers with frozen dataclasses
(`Variant`, `RunRecord`, `Job`, `Hit`, `Evaluation`), never with loose dicts, so a caller sees every field
it can use and a type checker sees every call.

Warm queries stay in memory: a dataset's notes are kept keyed by the dataset's fingerprint, and its vectors
and faiss index keyed by (encoder fingerprint, dataset fingerprint), so a second query on the same variant
costs a stat, one small sqlite read and the search itself. Retraining a run changes its fingerprint and
drops what was built from the old weights.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core import encoders
from core import jobs as job_queue
from core.baselines import COMPOSED_BASELINES, ZERO_SHOT, composed_encode
from core.explain import Explanation
from core.data.schema import Note
from core.data.store import DatasetInfo, Store
from core.data.working_set import WorkingSet, WorkingSets
from core.errors import WorkbenchError
from core.models.note_encoder import VARIANTS
from core.runs import RunRecord, RunStore, RunSummary, shipped_checkpoints_dir, summarize
from core.workspace import Workspace, check_dataset_name, check_run_name

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
MODALITIES = ("both", "image", "text")
SPLITS = ("test", "train", "all")
INDEX_POOL_SIZE = 8
MAPS_FOLDER = "_maps"
TRAINABLE_VARIANTS = tuple(VARIANTS)
# What each variant is, in one line, so no table or dropdown has to show a bare code name.
VARIANT_DESCRIPTIONS = {
    "text": "LLM on the text prompt only (no image)",
    "basic": "image tokens in the prompt (basic MLRM)",
    "micl": "mICL: image compressed first, then the text",
    "late": "text prompt + late-fusion gate with the image feature",
    "basic+late": "image tokens in the prompt + late fusion",
    "micl+late": "mICL + late fusion (= NoteLLM-2)",
    "zs-text": "zero-shot: frozen text embedder (MiniLM)",
    "zs-image": "zero-shot: frozen vision encoder",
    "zs-concat": "zero-shot: text and image embedders concatenated",
    "zs-llm": "zero-shot: the frozen LLM's last-token state on a one-word summary prompt",
    "zs-mlrm": "zero-shot: untrained MLRM (micl+late, no fine-tuning)",
}

# Zero-shot baselines that are an (untrained) NoteEncoder, by architecture: they have attention to look into
# and, with late fusion, a gate. The others are frozen embedders without an LLM read-out to analyse.
ZERO_SHOT_ARCHITECTURES = {"zs-mlrm": "micl+late"}

__all__ = ["Workbench", "Variant", "RunRecord", "RunSummary", "TrainingRequest", "Job", "JobState", "Hit", "Evaluation", "ACTIVE_JOB_STATES",
           "MODALITIES", "ZERO_SHOT", "ZERO_SHOT_ARCHITECTURES", "TRAINABLE_VARIANTS", "VARIANT_DESCRIPTIONS"]


# ------------------------------------------------------------------------------------------- the types
class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (JobState.QUEUED, JobState.RUNNING)


ACTIVE_JOB_STATES = tuple(state for state in JobState if state.active)


@dataclass(frozen=True)
class Variant:
    """Something a view can encode with: a finished run trained on the dataset, or a zero-shot baseline."""
    name: str
    kind: str  # "run" | "zero-shot"
    variant: str  # the architecture: one of TRAINABLE_VARIANTS (zs-mlrm's too), else the baseline's own name
    dataset: str
    steps: int = 0
    status: str = "ready"

    @property
    def zero_shot(self) -> bool:
        return self.kind == "zero-shot"

    @property
    def late_fusion(self) -> bool:
        return "late" in self.variant

    @property
    def reads_image(self) -> bool:
        """Whether its vectors look at the picture (not the text variant, zs-text or zs-llm)."""
        from core.explain import reads_image

        return reads_image(self.variant)

    @property
    def reads_text(self) -> bool:
        """Whether its vectors read the text (every variant but zs-image)."""
        from core.explain import reads_text

        return reads_text(self.variant)

    @property
    def has_attention(self) -> bool:
        """A NoteEncoder inside (a run, or the untrained MLRM): saliency, attention maps and gates apply."""
        return not self.zero_shot or self.name in ZERO_SHOT_ARCHITECTURES

    @property
    def description(self) -> str:
        if self.zero_shot:
            return VARIANT_DESCRIPTIONS.get(self.name, "zero-shot baseline")
        return VARIANT_DESCRIPTIONS.get(self.variant, "")


@dataclass(frozen=True)
class Job:
    job_id: str
    kind: str  # "train" | "encode"
    run: str
    dataset: str
    state: JobState
    step: int
    total: int
    message: str
    created_at: str
    updated_at: str
    log_path: str = ""
    log_tail: str = ""

    @property
    def active(self) -> bool:
        return self.state.active

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Job":
        return cls(job_id=row["job_id"], kind=row.get("kind") or "", run=row.get("run") or "",
                   dataset=row.get("dataset") or "", state=JobState(row["state"]), step=int(row.get("step") or 0),
                   total=int(row.get("total") or 0), message=row.get("message") or "",
                   created_at=row.get("created_at") or "", updated_at=row.get("updated_at") or "",
                   log_path=row.get("log_path") or "", log_tail=row.get("log_tail") or "")


@dataclass(frozen=True)
class TrainingRequest:
    """A run's training request: dataset, variant, preset, steps, and the options it set beyond its preset
    (`overrides`: batch_pairs, lr_llm, lr_new, llm, vision, llm_tuning)."""
    run: str
    dataset: str
    variant: str
    preset: str
    steps: int
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One neighbour: rank counts from 1; the note is the stored note itself."""
    note: Note
    score: float
    rank: int

    @property
    def note_id(self) -> str:
        return self.note.note_id


@dataclass(frozen=True)
class Evaluation:
    """Recall of one variant on one dataset split and modality. `figures` keeps the full evaluation JSON."""
    variant: str
    dataset: str
    split: str
    modality: str
    split_seed: int
    test_fraction: float
    queries: int
    pool: int
    recall: Mapping[int, float]  # k -> Recall@k
    recall10_ci95: tuple[float, float] | None
    subsets: Mapping[str, Mapping[str, float]]
    figures: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Evaluation":
        recall = {int(key[len("recall@"):]): float(value) for key, value in data.items()
                  if key.startswith("recall@") and key[len("recall@"):].isdigit()}
        ci = data.get("recall@10_ci95")
        return cls(variant=data["variant"], dataset=data["dataset"], split=data["split"], modality=data["modality"],
                   split_seed=int(data["split_seed"]), test_fraction=float(data["test_fraction"]),
                   queries=int(data.get("queries") or 0), pool=int(data.get("pool") or 0),
                   recall=MappingProxyType(dict(sorted(recall.items()))),
                   recall10_ci95=(float(ci[0]), float(ci[1])) if ci else None,
                   subsets=MappingProxyType(dict(data.get("subsets") or {})),
                   figures=MappingProxyType(dict(data)))

    def as_dict(self) -> dict:
        return dict(self.figures)


# ------------------------------------------------------------------------------------ paired comparisons
PAPER_K = 10  # the paper's and the reproduction's headline metric: Recall@10
MIN_PAIRED_QUERIES = 30  # below this a paired test of Recall@10 says little: flagged, not shown as a result


@dataclass(frozen=True)
class QueryRanks:
    """One query of a paired comparison: its one target and where each side ranked it (1 = first)."""
    query: str
    target: str
    rank_a: int
    rank_b: int

    @property
    def gain(self) -> int:
        """Places B moved the target up against A (negative: B ranks it lower)."""
        return self.rank_a - self.rank_b


@dataclass(frozen=True)
class PairedEvaluation:
    """Two variants on the same test queries and candidate pool: per-query target ranks, Recall@k of each,
    and the paired difference (B minus A) with its paired bootstrap interval and p-value (core.stats).
    `trivial_reasons` holds one sentence per reason the figures are no result (k covers the whole pool, too
    few queries); a view shows those sentences instead of the numbers."""
    dataset: str
    modality: str
    a: str
    b: str
    k: int
    ranks: tuple[QueryRanks, ...]  # B's biggest gains first
    pool: int
    queries: int
    recall_a: float
    recall_b: float
    difference: float  # recall_b - recall_a
    ci95: tuple[float, float]
    p_value: float
    test: str  # "mcnemar-exact" (one seed each side, 0/1 hits) or "sign-flip permutation"
    chance: float  # Recall@k of a uniformly random ranking of this pool
    split_seed: int
    test_fraction: float
    k_covers_pool: bool
    few_queries: bool
    trivial_reasons: tuple[str, ...] = ()

    @property
    def trivial(self) -> bool:
        return self.k_covers_pool or self.few_queries

    @property
    def significant(self) -> bool:
        return not self.trivial and self.p_value < 0.05


@dataclass(frozen=True)
class ClaimComparison:
    """One paired test the reproduction's claims rest on: `a` minus `b` ((variant, modality) each) on Recall@10
    of all test queries, Holm-adjusted over the reproduction's whole family of tests."""
    label: str
    a: tuple[str, str]
    b: tuple[str, str]
    queries: int
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    verdict: str  # "higher" | "lower" | "no difference shown"


@dataclass(frozen=True)
class Claim:
    number: str
    statement: str
    outcome: str  # "holds" | "does not hold" | "not shown" | "undecided" | "not measured"
    comparisons: tuple[ClaimComparison, ...]


@dataclass(frozen=True)
class PaperClaims:
    """The paper's claims as the reproduction judged them on one dataset (results/…/per_query.json), or
    why there is nothing to judge: `note` says which (no reproduction of this dataset, one without per-query
    ranks, one marked superseded)."""
    dataset: str
    source: str  # the results folder, relative to the repository; "" when none was found
    claims: tuple[Claim, ...]
    note: str
    superseded: bool = False
    tests: int = 0  # size of the Holm family

    @property
    def judged(self) -> bool:
        return bool(self.claims)


# ---------------------------------------------------------------------------------- in-memory pools
@dataclass
class _Corpus:
    """A dataset's notes in store order (and, once asked for, its pairs as a relation), valid while the
    dataset's fingerprint holds."""
    fingerprint: tuple
    notes: list[Note]
    row_of: dict[str, int]
    related: Mapping[str, frozenset[str]] | None = None
    default_query: str | None = None  # "" once looked for and none found


@dataclass
class _Space:
    """One encoder's vectors of one dataset in one modality, their index, and the notes they stand for."""
    fingerprint: tuple
    ids: list[str]
    matrix: np.ndarray
    index: Any  # core.index.VectorIndex
    corpus: _Corpus

    def search(self, vector: np.ndarray, k: int, exclude: set[str]) -> list[tuple[str, float]]:
        """One query on one OpenMP thread: on a busy two-core machine faiss's threads wait for each other
        (30 ms instead of 0.4 ms for 20k vectors). The setting is per calling thread in OpenMP, so
        bulk searches elsewhere keep their threads."""
        import faiss

        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(vector[None], k, exclude=[exclude])[0]
        finally:
            faiss.omp_set_num_threads(threads)


class _Pool:
    """A small LRU with one lock per key, so two requests never build the same thing twice at once."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._locks: dict = {}
        self._lock = threading.Lock()

    def lock(self, key) -> threading.RLock:
        with self._lock:
            return self._locks.setdefault(key, threading.RLock())

    def get(self, key, fingerprint):
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] != fingerprint:
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key, fingerprint, value) -> None:
        with self._lock:
            self._items[key] = (fingerprint, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                evicted, _ = self._items.popitem(last=False)
                log.debug("pool evicted %s", evicted)

    def drop(self, match: Callable[[Any], bool]) -> None:
        with self._lock:
            for key in [k for k in self._items if match(k)]:
                del self._items[key]


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise WorkbenchError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")


# --------------------------------------------------------------------------------------- the workbench
class Workbench:
    def __init__(self, workspace: Workspace | str | Path | None = None):
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
        self.store = Store(self.workspace)
        self.runs = RunStore(self.workspace)
        self._corpora = _Pool(INDEX_POOL_SIZE)
        self._spaces = _Pool(INDEX_POOL_SIZE)
        self._local = threading.local()

    # ------------------------------------------------------------------------------------ datasets
    def datasets(self) -> list[DatasetInfo]:
        return self.store.list_datasets()

    def dataset_names(self) -> list[str]:
        return [d.name for d in self.store.list_datasets()]

    def ensure_sample(self) -> str:
        from core.data.sample import ensure_sample_dataset

        return ensure_sample_dataset(self.store)

    def notes(self, dataset: str) -> list[Note]:
        """All notes of a dataset in store order, from memory while the dataset is unchanged."""
        return list(self._corpus(dataset).notes)

    def note(self, dataset: str, note_id: str) -> Note:
        corpus = self._corpus(dataset)
        row = corpus.row_of.get(str(note_id))
        if row is None:
            raise WorkbenchError(f"dataset '{dataset}' has no note '{note_id}'")
        return corpus.notes[row]

    def related(self, dataset: str) -> Mapping[str, frozenset[str]]:
        """note_id -> ids it is paired with (the known related notes, both directions); read-only, kept in
        memory with the notes, since every search marks its related hits."""
        corpus = self._corpus(dataset)
        if corpus.related is None:
            out: dict[str, set[str]] = {}
            for a, b in self.store.pairs(dataset):
                out.setdefault(a, set()).add(b)
                out.setdefault(b, set()).add(a)
            corpus.related = MappingProxyType({note: frozenset(ids) for note, ids in out.items()})
        return corpus.related

    def delete_dataset(self, name: str, confirm: str | None = None) -> None:
        """Delete a dataset, its images no other dataset uses, and every cached vector, evaluation or map
        of it. Refused while a job works on it and, when `confirm` is given, unless it repeats the name.
        Runs trained on it are kept: they are models, not data."""
        from core import service

        service.delete_dataset(self.workspace, name, confirm)
        self._corpora.drop(lambda key: key == name)
        self._spaces.drop(lambda key: key[1] == name)

    def map_cache_dir(self, dataset: str) -> Path:
        """Where a dataset's 2-D maps are cached. Under indexes/<owner>/<dataset>/ like its vectors, so deleting
        the dataset drops them too; "_maps" cannot be a run's name (those start with a letter or digit)."""
        folder = self.workspace.indexes_dir / MAPS_FOLDER / check_dataset_name(dataset)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def import_table(self, name: str, notes: str | Path, pairs: str | Path | None = None,
                     images: str | Path | None = None, columns: Sequence[str] | Mapping[str, str] | None = None,
                     split: str | None = None, skip_bad: bool = False, progress: Callable | None = None):
        """Import a Parquet notes file or a Hugging Face save_to_disk folder (the format is told from `notes`),
        with the upload's checks and caps (core.data.bridges); returns the store's ImportReport."""
        from core.data.bridges import import_table

        return import_table(self.store, name, notes, pairs, images, columns, split, skip_bad, progress)

    def export_dataset(self, dataset: str, out: str | Path, formats: str = "both", neighbours: int = 10,
                       progress: Callable | None = None) -> dict:
        """Write a dataset with its images, and the vectors, neighbours, maps and metrics the workspace has
        cached for it, as Parquet (and CSV) into a new folder (core.data.export); returns the manifest."""
        from core.data.export import export_dataset

        return export_dataset(self.workspace, dataset, out, formats, neighbours, progress)

    def import_files(self, name: str, notes: str | Path, pairs: str | Path | None = None,
                     images: str | Path | None = None, skip_bad: bool = False, progress: Callable | None = None):
        """Import an upload whatever its notes file is: CSV / JSONL (the upload format) or a Parquet table
        (bytes or paths in its image column; core.data.bridges). Pairs and images as for that format. Returns
        the store's ImportReport; nothing changes on bad input."""
        from core.data.bridges import table_format

        if table_format(notes) == "parquet":
            return self.import_table(name, notes, pairs, images, skip_bad=skip_bad, progress=progress)
        if pairs is not None and table_format(pairs) is not None:
            raise WorkbenchError(f"{Path(pairs).name}: Parquet pairs go with a Parquet notes file; "
                                 "give the pairs as .csv (note_id_1,note_id_2)")
        return self.store.import_dataset(name, notes, pairs, images, skip_bad=skip_bad, progress=progress)

    def export_archive(self, dataset: str, archive: str | Path, neighbours: int = 10,
                       progress: Callable | None = None) -> dict:
        """`export_dataset` in both formats, packed into one .zip at `archive` (a folder `<dataset>/` inside):
        the file a browser downloads. Written whole or not at all; the unpacked folder does not stay."""
        import os
        import shutil
        import tempfile
        import zipfile

        check_dataset_name(dataset)
        archive = Path(archive)
        scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=archive.parent))
        staging = archive.with_name(f".{archive.name}.{os.getpid()}.tmp")
        try:
            folder = scratch / dataset
            manifest = self.export_dataset(dataset, folder, "both", neighbours, progress)
            # Parquet and images are compressed already: deflating them again costs time for nothing.
            with zipfile.ZipFile(staging, "w") as packed:
                for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                    kind = zipfile.ZIP_DEFLATED if path.suffix in (".csv", ".json") else zipfile.ZIP_STORED
                    packed.write(path, f"{dataset}/{path.relative_to(folder).as_posix()}", compress_type=kind)
            os.replace(staging, archive)
        finally:
            staging.unlink(missing_ok=True)
            shutil.rmtree(scratch, ignore_errors=True)
        return manifest

    # ------------------------------------------------------------------------------------ working sets
    # Notes picked on a map and search results marked (not) related, per dataset, on their way to training
    # data (core/data/working_set.py). Every id is checked against the dataset; an unknown one changes nothing.
    def _working_sets(self) -> WorkingSets:
        if getattr(self, "_working", None) is None:
            self._working = WorkingSets(self.store)
        return self._working

    def working_set(self, dataset: str) -> WorkingSet:
        return self._working_sets().get(dataset)

    def working_set_add(self, dataset: str, note_ids: Sequence[str]) -> WorkingSet:
        """Add notes (a box or lasso selection) to the dataset's working set; repeats are kept once."""
        return self._working_sets().add_notes(dataset, note_ids)

    def working_set_remove(self, dataset: str, note_ids: Sequence[str]) -> WorkingSet:
        return self._working_sets().remove_notes(dataset, note_ids)

    def working_set_mark(self, dataset: str, query_id: str, note_id: str, mark: str | None) -> WorkingSet:
        """Mark a search result of a dataset note "related" (a positive pair), "not related" (a hard negative)
        or None (unmarked)."""
        return self._working_sets().mark(dataset, query_id, note_id, mark)

    def working_set_clear(self, dataset: str, what: str = "all") -> WorkingSet:
        return self._working_sets().clear(dataset, what)

    def working_set_export(self, dataset: str, folder: str | Path) -> dict[str, Path]:
        """pairs.csv (note_id_1,note_id_2), hard_negatives.csv (query_id,negative_id), working_set_notes.csv."""
        return self._working_sets().export(dataset, folder)

    def working_set_save(self, dataset: str, name: str, notes: str = "picked", pairs: str = "add") -> DatasetInfo:
        """Save the working set as a new dataset `name` that Fine-tune can train on (see
        WorkingSets.save_as_dataset for what it holds)."""
        return self._working_sets().save_as_dataset(dataset, name, notes, pairs)

    def _dataset_fingerprint(self, dataset: str) -> tuple:
        """What changes when a dataset is deleted, re-imported or grows. Read on a connection kept per
        thread: opening one (with its pragmas) costs more than the rest of a warm query."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.workspace.db_path, timeout=60, isolation_level=None)
            connection.execute("PRAGMA busy_timeout = 60000")
            self._local.connection = connection
        row = connection.execute("select name, created_at, notes, pairs from datasets where name = ?",
                                 [dataset]).fetchone()
        if row is None:  # the store's "unknown dataset" message, or a dataset imported a moment ago
            info = self.store.dataset(dataset)
            return (info.name, info.created_at, info.notes, info.pairs)
        return tuple(row)

    def _corpus(self, dataset: str) -> _Corpus:
        fingerprint = self._dataset_fingerprint(dataset)
        corpus = self._corpora.get(dataset, fingerprint)
        if corpus is not None:
            return corpus
        with self._corpora.lock(dataset):
            corpus = self._corpora.get(dataset, fingerprint)
            if corpus is None:
                notes = self.store.notes(dataset)
                corpus = _Corpus(fingerprint, notes, {n.note_id: i for i, n in enumerate(notes)})
                self._corpora.put(dataset, fingerprint, corpus)
            return corpus

    # ------------------------------------------------------------------------------------ variants
    def run(self, name: str) -> RunRecord:
        return self.runs.get(name)

    def variants(self, dataset: str | None) -> list[Variant]:
        """Finished runs trained on `dataset` first (newest first), then the zero-shot baselines."""
        if not dataset:
            return []
        rows = [Variant(name=r.run, kind="run", variant=r.variant, dataset=dataset, steps=r.step, status=r.status)
                for r in sorted(self.runs.all_runs(), key=lambda r: r.updated_at, reverse=True)
                if r.dataset == dataset and r.finished and r.has_weights]
        rows += [Variant(name=name, kind="zero-shot", variant=ZERO_SHOT_ARCHITECTURES.get(name, name), dataset=dataset)
                 for name in ZERO_SHOT]
        return rows

    def variant(self, dataset: str | None, name: str) -> Variant:
        """The variant called `name`; a run not trained on this dataset is described from its run.json."""
        for row in self.variants(dataset):
            if row.name == name:
                return row
        if name in ZERO_SHOT:
            return Variant(name=name, kind="zero-shot", variant=ZERO_SHOT_ARCHITECTURES.get(name, name),
                           dataset=dataset or "")
        record = self.runs.get(name)
        return Variant(name=name, kind="run", variant=record.variant, dataset=record.dataset, steps=record.step,
                       status=record.status)

    def encoder_fingerprint(self, name: str) -> str:
        """Changes whenever the encoder's weights do, so everything keyed on it stays true."""
        return encoders.fingerprint(self.workspace, name)

    # ------------------------------------------------------------------------------------ encoders
    def encoder(self, name: str):
        """A run's NoteEncoder or a zero-shot encoder, loaded once per process (core.encoders) and reloaded
        when its weights change."""
        return encoders.load(self.workspace, name)

    def encode(self, name: str, notes: Sequence[Note], modality: str = "both", batch_size: int = 32,
               progress: Progress | None = None) -> np.ndarray:
        """(N, d) float32 L2-normalised vectors of any notes (not cached): e.g. one composed in the page."""
        from core.encode import encode_notes

        _check_modality(modality)
        encoder = self.encoder(name)
        # One forward at a time per encoder: modules keep per-call state (feature caches, autocast).
        with encoders.lock(self.workspace, name):
            return encode_notes(encoder, list(notes), batch_size, modality, progress,
                                workspace_root=self.workspace.root)

    def note_vectors(self, name: str, dataset: str, notes: Sequence[Note], modality: str = "both",
                     progress: Progress | None = None) -> np.ndarray:
        """Vectors of some of a dataset's notes through the on-disk cache (only missing notes are encoded)."""
        _check_modality(modality)
        cache = self.vector_cache(name, dataset, modality)
        if name in COMPOSED_BASELINES:  # from the parts' caches, never encoding a part again
            return cache.vectors(list(notes), composed_encode(
                name, lambda part, todo, p: self.note_vectors(part, dataset, todo, modality, p)), progress)
        return cache.vectors(list(notes), lambda todo, p: self.encode(name, todo, modality, progress=p), progress)

    def vector_cache(self, name: str, dataset: str, modality: str = "both"):
        """The on-disk vectors of one encoder on one dataset (core.encode.VectorCache), under the encoder's
        current fingerprint; the name is resolved before it becomes part of a path."""
        from core import service

        return service.vector_cache(self.workspace, name, dataset, modality)

    def cached_count(self, name: str, dataset: str, modality: str = "both") -> tuple[int, int]:
        """(notes of the dataset whose vectors are ready under the encoder's current weights, notes of the
        dataset): in memory when the index is built, else on disk. Encodes nothing and loads no model."""
        _check_modality(modality)
        corpus = self._corpus(dataset)
        if self._spaces.get((name, dataset, modality),
                            (self.encoder_fingerprint(name), corpus.fingerprint)) is not None:
            return len(corpus.notes), len(corpus.notes)
        from core.encode import note_hash

        present, _, _ = self.vector_cache(name, dataset, modality).load()
        found = sum(f"{note.note_id}\0{note_hash(note, modality)}" in present for note in corpus.notes)
        return found, len(corpus.notes)

    def dataset_vectors(self, name: str, dataset: str, modality: str = "both",
                        progress: Progress | None = None) -> tuple[list[str], np.ndarray]:
        """(note ids in store order, (N, d) float32) for a whole dataset."""
        space = self._space(name, dataset, modality, progress)
        return list(space.ids), space.matrix

    def _space(self, name: str, dataset: str, modality: str, progress: Progress | None = None) -> _Space:
        _check_modality(modality)
        corpus = self._corpus(dataset)
        fingerprint = (self.encoder_fingerprint(name), corpus.fingerprint)
        key = (name, dataset, modality)
        space = self._spaces.get(key, fingerprint)
        if space is not None:
            return space
        with self._spaces.lock(key):
            space = self._spaces.get(key, fingerprint)
            if space is None:
                from core.index import build_index

                matrix = self.note_vectors(name, dataset, corpus.notes, modality, progress)
                ids = [n.note_id for n in corpus.notes]
                # Exact below the size threshold; past it an IVF index tuned to recall@10 >= 0.95.
                space = _Space(fingerprint, ids, matrix, build_index(ids, matrix), corpus)
                log.info("index of %s on %s (%s): %d vectors of %d dimensions", name, dataset, modality,
                         len(ids), matrix.shape[1] if matrix.ndim == 2 else 0)
                self._spaces.put(key, fingerprint, space)
            return space

    # ------------------------------------------------------------------------------------ neighbours
    def neighbours(self, name: str, dataset: str, note_id: str | None = None, query: Note | None = None,
                   k: int = 10, modality: str = "both") -> list[Hit]:
        """The k nearest notes of a stored note (`note_id`) or of a composed `query` note, the query note
        itself left out; equal scores are ordered by a seeded random order, not by position."""
        if (note_id is None) == (query is None):
            raise WorkbenchError("give either note_id or query")
        if k < 1:
            raise WorkbenchError("k must be at least 1")
        space = self._space(name, dataset, modality)
        if query is not None:
            vector = self.encode(name, [query], modality)[0]
            exclude = {query.note_id} if query.note_id else set()
        else:
            row = space.corpus.row_of.get(str(note_id))
            if row is None:
                raise WorkbenchError(f"dataset '{dataset}' has no note '{note_id}'")
            vector, exclude = space.matrix[row], {str(note_id)}
        corpus = space.corpus
        return [Hit(note=corpus.notes[corpus.row_of[hit]], score=score, rank=rank)
                for rank, (hit, score) in enumerate(space.search(vector, k, exclude), 1)]

    # ------------------------------------------------------------------------------------ explanations
    def explain(self, name: str, dataset: str, neighbours: Sequence[Hit | str], note_id: str | None = None,
                query: Note | None = None, gate: bool = False) -> list[Explanation]:
        """Why each neighbour of a stored note (`note_id`) or a composed `query` is there, in one call
        (core.explain.Explanation): its cosine to the query under text only and under image only, from this
        variant's own text-only and image-only vectors (the index in memory when built, else the vector
        cache, which encodes only the notes it lacks), the shared topics and words, and whether the pair is
        labelled. `gate=True` adds, for a late-fusion variant, the gate's image share of each neighbour (one
        forward pass per note: not cached)."""
        from core.explain import explanations, has_image, has_text

        if (note_id is None) == (query is None):
            raise WorkbenchError("give either note_id or query")
        corpus = self._corpus(dataset)
        ids = [hit.note_id if isinstance(hit, Hit) else str(hit) for hit in neighbours]
        missing = [i for i in ids if i not in corpus.row_of]
        if missing:
            raise WorkbenchError(f"dataset '{dataset}' has no note '{missing[0]}'")
        notes = [corpus.notes[corpus.row_of[i]] for i in ids]
        if query is None:
            query = self.note(dataset, note_id)
        row = self.variant(dataset, name)
        scores = {}
        for modality, wanted, present in (("text", row.reads_text, has_text), ("image", row.reads_image, has_image)):
            usable = [present(note) for note in notes]
            if not (wanted and present(query) and any(usable)):
                scores[modality] = [None] * len(notes)
                continue
            vectors = self._explain_vectors(name, dataset, [n for n, ok in zip(notes, usable) if ok], modality)
            mine = (self._explain_vectors(name, dataset, [query], modality) if note_id is not None
                    else self.encode(name, [query], modality))[0]
            found = iter((vectors @ mine).tolist())
            scores[modality] = [float(next(found)) if ok else None for ok in usable]
        shares = self._gate_image_shares(name, row, [query, *notes]) if gate else None
        related = self.related(dataset).get(note_id, frozenset()) if note_id is not None else frozenset()
        return explanations(query, notes, scores["text"], scores["image"], related, shares)

    def _explain_vectors(self, name: str, dataset: str, notes: Sequence[Note], modality: str) -> np.ndarray:
        """Rows of a modality's vectors: from the index in memory when it is built, else through the vector
        cache under the same lock the index build takes, so the two never write the cache at once."""
        corpus = self._corpus(dataset)
        key = (name, dataset, modality)
        space = self._spaces.get(key, (self.encoder_fingerprint(name), corpus.fingerprint))
        if space is not None:
            return space.matrix[[corpus.row_of[note.note_id] for note in notes]]
        with self._spaces.lock(key):
            return np.asarray(self.note_vectors(name, dataset, notes, modality), dtype=np.float32)

    def _gate_image_shares(self, name: str, row: Variant, notes: Sequence[Note]) -> dict[str, float] | None:
        """note id -> 1 - the late-fusion gate's LLM share (0 for a note without a picture); None without a
        gate."""
        if not (row.late_fusion and row.has_attention):
            return None
        from core.analysis.gate import gate_shares

        with encoders.lock(self.workspace, name):
            frame = gate_shares(self.encoder(name), list(notes))
        return {note_id: 1.0 - float(share) for note_id, share in zip(frame["note_id"], frame["llm_share"])}

    def default_query(self, dataset: str) -> str | None:
        """The note a page shows first (core.explain.default_query): the most related note among those with
        a title and a picture that is not near-blank; remembered while the dataset is unchanged."""
        from core.data.images import decode_image, looks_blank
        from core.explain import default_query

        corpus = self._corpus(dataset)
        chosen = corpus.default_query
        if chosen is None:
            def blank(note: Note) -> bool:
                return looks_blank(decode_image(note.image, draft_side=128))

            chosen = default_query(corpus.notes, self.related(dataset), blank) or ""
            corpus.default_query = chosen
        return chosen or None

    # ------------------------------------------------------------------------------------ evaluation
    def split(self, name: str, dataset: str):
        """The test split a variant is evaluated on: a run's own when it was trained on this dataset, else
        the default one, which every zero-shot baseline shares."""
        from core import service

        return service.split_for(self.workspace, name, dataset)

    def evaluate(self, name: str, dataset: str, split: str = "test", modality: str = "both", seed: int = 0,
                 progress: Progress | None = None, use_cache: bool = True, protocol: str = "distractors"
                 ) -> Evaluation:
        """Recall@k on the variant's own test split (cached per weights and dataset); `protocol` names the
        candidate pool (core.evaluate.PROTOCOLS)."""
        from core import service

        _check_modality(modality)
        if split not in SPLITS:
            raise WorkbenchError(f"unknown split {split!r}; choose {', '.join(SPLITS)}")
        return Evaluation.from_json(service.evaluate_variant(self.workspace, name, dataset, split, modality, seed,
                                                             progress, use_cache, protocol=protocol))

    def evaluation_table(self, dataset: str, names: Sequence[str], modalities: Sequence[str] = MODALITIES,
                         split: str = "test", seed: int = 0, progress: Progress | None = None):
        """pandas DataFrame: one row per variant x subset x modality (see core.service.evaluation_table)."""
        from core import service

        return service.evaluation_table(self.workspace, dataset, list(names), tuple(modalities), split, seed,
                                        progress)

    # ------------------------------------------------------------------------------------ the paper's claims
    def paired_comparison(self, dataset: str, a: str, b: str, modality: str = "both", k: int = PAPER_K,
                          seed: int = 0) -> PairedEvaluation:
        """Variants `a` and `b` (runs or zero-shot baselines) on the same test queries and pool: each side's
        cached evaluation (its vectors and figures are cached per weights and dataset), their per-query
        target ranks paired, and B minus A on Recall@k with core.stats' paired bootstrap and test. Refused
        with a sentence when the two were evaluated on different splits (runs trained on another split)."""
        from core.evaluate import recall_chance
        from core.stats import compare_paired

        if k < 1:
            raise WorkbenchError("k must be at least 1")
        first, second = (self.evaluate(name, dataset, "test", modality, seed) for name in (a, b))
        splits = [(e.split_seed, e.test_fraction, e.figures.get("distractor_fraction")) for e in (first, second)]
        if splits[0] != splits[1]:
            raise WorkbenchError(
                f"'{a}' and '{b}' are evaluated on different test splits (seed {splits[0][0]}, {splits[0][1]:.0%} "
                f"held out against seed {splits[1][0]}, {splits[1][1]:.0%}): a paired comparison needs the same "
                "queries and pool; pick variants trained on one split (zero-shot baselines use seed 0, 20%)")
        per_query = [e.figures.get("per_query") or {} for e in (first, second)]
        if not per_query[0].get("rank") or not per_query[1].get("rank"):
            raise WorkbenchError(f"dataset '{dataset}' has no usable test queries to compare '{a}' and '{b}' on")
        if per_query[0]["target"] != per_query[1]["target"] or first.pool != second.pool:
            raise WorkbenchError(f"'{a}' and '{b}' answered different queries or pools; evaluate both again")
        targets, ranks_a, ranks_b = per_query[0]["target"], per_query[0]["rank"], per_query[1]["rank"]
        rows = sorted((QueryRanks(query=q, target=targets[q], rank_a=int(ranks_a[q]) + 1, rank_b=int(ranks_b[q]) + 1)
                       for q in ranks_a), key=lambda r: (-r.gain, r.rank_b, r.query))
        hits_a = {r.query: float(r.rank_a <= k) for r in rows}
        hits_b = {r.query: float(r.rank_b <= k) for r in rows}
        result = compare_paired(hits_b, hits_a)  # b minus a
        reasons = []
        covers, few = k >= first.pool, len(rows) < MIN_PAIRED_QUERIES
        if covers:
            reasons.append(f"Recall@{k} is trivial here: the candidate pool holds {first.pool} notes, so every "
                           f"target is in the top {k} whatever the model does.")
        if few:
            reasons.append(f"Only {len(rows)} test queries (fewer than {MIN_PAIRED_QUERIES}): a difference of "
                           f"Recall@{k} on so few queries is no evidence either way.")
        return PairedEvaluation(dataset=dataset, modality=modality, a=a, b=b, k=k, ranks=tuple(rows),
                                pool=first.pool, queries=len(rows), recall_a=result.mean_b, recall_b=result.mean_a,
                                difference=result.difference, ci95=(result.ci_low, result.ci_high),
                                p_value=result.p_value, test=result.test, chance=recall_chance(first.pool, k),
                                split_seed=first.split_seed, test_fraction=first.test_fraction,
                                k_covers_pool=covers, few_queries=few, trivial_reasons=tuple(reasons))

    def paper_claims(self, dataset: str, results_dir: str | Path | None = None) -> PaperClaims:
        """The paper's claims as the reproduction judged them for `dataset`, from the results folder it wrote
        (`results/`, a folder below it, or its weak-text condition): every Recall@10 comparison the
        reproduction makes, on all queries and each short/long split, plus its saliency comparisons, paired
        by core.stats and Holm-adjusted as one family, as RESULTS.md does. Without a reproduction of this
        dataset, or one written before per-query ranks were kept, `note` says so and no claim is judged."""
        from core.workspace import REPO_ROOT

        root = Path(results_dir) if results_dir is not None else REPO_ROOT / "results"
        found = _reproduction_folder(root, dataset)
        if found is None:
            return PaperClaims(dataset=dataset, source="", claims=(), note=(
                f"No reproduction of '{dataset}' is in {_shown_path(root)}: its claims have not been judged "
                "(`python -m core reproduce` judges them)."))
        folder, superseded = found
        source = _shown_path(folder)
        per_query = _read_json(folder / "per_query.json")
        if not per_query.get("results"):
            return PaperClaims(dataset=dataset, source=source, claims=(), superseded=superseded, note=(
                f"The reproduction in {source} kept no per-query ranks"
                + (" and is marked superseded (not a finding)" if superseded else "")
                + ", so its claims cannot be judged by paired tests."))
        claims, tests = _judge_claims(per_query, _read_json(folder / "saliency_batches.json"))
        note = (f"Judged from the reproduction in {source} (its own runs and workspace): paired tests over the same "
                f"queries, Holm-adjusted over all {tests} of its comparisons; a difference counts when the "
                "adjusted p is below 0.05.")
        if superseded:
            note = "Superseded (kept for comparison, not a finding). " + note
        return PaperClaims(dataset=dataset, source=source, claims=claims, note=note, superseded=superseded,
                           tests=tests)

    # ------------------------------------------------------------------------------------ training and jobs
    def start_training(self, dataset: str, variant: str, run: str, preset: str = "cpu", steps: int = 100,
                       batch_pairs: int | None = None, lr_llm: float | None = None, lr_new: float | None = None,
                       llm: str | None = None, vision: str | None = None, llm_tuning: str | None = None,
                       seed: int | None = None) -> str:
        """Check the request now (a clear error in the page), then train in a worker; returns the job id."""
        from core import service

        overrides = {key: value for key, value in dict(batch_pairs=batch_pairs, lr_llm=lr_llm, lr_new=lr_new, llm=llm,
                                                       vision=vision, llm_tuning=llm_tuning, seed=seed).items()
                     if value is not None}
        return service.start_training(self.workspace, dataset, variant, run, preset=preset, steps=int(steps),
                                      **overrides)

    def resume_training(self, run: str) -> str:
        from core import service

        return service.resume_training(self.workspace, run)

    def start_encoding(self, name: str, dataset: str, modality: str = "both") -> str:
        from core import service

        return service.start_encoding(self.workspace, name, dataset, modality)

    def cancel_job(self, job_id: str) -> None:
        job_queue.cancel(self.workspace, job_id)

    def job(self, job_id: str) -> Job:
        return Job.from_row(job_queue.get_job(self.workspace, job_id))

    def jobs(self) -> list[Job]:
        """Newest first."""
        return [Job.from_row(row) for row in job_queue.list_jobs(self.workspace)]

    def latest_job(self, kind: str = "train") -> Job | None:
        """The newest active job of a kind, else the newest of that kind: what a reloaded page re-attaches to."""
        rows = [job for job in self.jobs() if job.kind == kind]
        if not rows:
            return None
        active = [job for job in rows if job.active]
        return max(active or rows, key=lambda job: (job.created_at, job.job_id))

    def run_events(self, run: str) -> list[dict]:
        return self.runs.events(run)

    def training_request(self, run: str) -> TrainingRequest:
        """What a run was asked to train with, as a training form has it: the options it set that differ
        from its preset's values (a form that shows them blank for "the preset's" can restore them)."""
        from core.train.trainer import preset_configs

        record = self.runs.get(run)
        train, model = dict(record.info.get("train") or {}), dict(record.info.get("model") or {})
        changed = {}
        try:
            train_defaults, model_defaults = preset_configs(record.preset, record.variant)
        except WorkbenchError:  # a preset or variant this version no longer knows: no options to restore
            train_defaults, model_defaults = train, model
        else:
            model_defaults = model_defaults.to_dict()
        for key in ("batch_pairs", "lr_llm", "lr_new"):
            if key in train and train[key] != train_defaults.get(key):
                changed[key] = train[key]
        for key in ("llm", "vision", "llm_tuning"):
            if key in model and model[key] != model_defaults.get(key):
                changed[key] = model[key]
        return TrainingRequest(run=record.run, dataset=record.dataset, variant=record.variant, preset=record.preset,
                               steps=record.total_steps, overrides=MappingProxyType(changed))

    # ------------------------------------------------------------------------------------ managing runs
    def run_summaries(self) -> list[RunSummary]:
        """Every run of the workspace (any dataset, any state), newest first, each with its last evaluation,
        its image-path figures, its wall time and the job that holds it, if any."""
        holders = {}
        for job in self.jobs():  # newest first: the newest active job of a run is the one shown
            if job.active and job.run and job.run not in holders:
                holders[job.run] = job
        rows = []
        for record in sorted(self.runs.all_runs(), key=lambda r: (r.created_at, r.run), reverse=True):
            job = holders.get(record.run)
            rows.append(summarize(record, self.runs.events(record.run), job.job_id if job else "",
                                  job.state.value if job else ""))
        return rows

    def delete_run(self, name: str, confirm: str | None = None) -> None:
        """Delete a run: its folder (weights, checkpoints, events), its cached vectors and evaluations, its
        maps. Refused for a shipped demo run, while a job holds the run, and, when `confirm` is given,
        unless it repeats the name. The run is held like a job holds it while it goes, so no training or
        encoding can start on it half-way."""
        self.runs.existing(name)  # a path, a link, a baseline or an unknown name is refused here
        if confirm is not None and confirm.strip() != name:
            raise WorkbenchError(f"type the run name '{name}' to confirm; nothing was deleted")
        self.runs.refuse_shipped(name, "deleted")
        with self._holding("delete", name):
            self.runs.delete(name)
            self._forget_run(name)

    def rename_run(self, name: str, new: str) -> RunRecord:
        """Rename a run (see `RunStore.rename` for what is refused); both names are held while it moves, so
        no job can start on either. Its cached vectors, evaluations and maps go: they are keyed by name and
        are rebuilt under the new one."""
        self.runs.existing(name)
        new = check_run_name(new.strip() if isinstance(new, str) else new)
        if new == name or self.runs.is_shipped(name) or self.runs.folder(new).exists():
            return self.runs.rename(name, new)  # refused there with its sentence, before any job row is made
        with self._holding("rename", name), self._holding("rename", new):
            record = self.runs.rename(name, new)
            self._forget_run(name)
        return record

    @contextmanager
    def _holding(self, kind: str, run: str):
        """Hold `run` as a job does (core.jobs.claim: atomic, refused while another job holds it); the row
        ends finished, or failed with the reason."""
        job_id = job_queue.claim(self.workspace, kind, run=run, limit=1 << 30)
        reporter = job_queue.JobReporter(self.workspace, job_id)
        try:
            yield job_id
        except BaseException as error:
            reporter.end("failed", str(error)[:200])
            raise
        reporter.end("finished", f"{kind} of run '{run}' done")

    def _forget_run(self, name: str) -> None:
        """Drop what was built from a run that is gone: vectors and evaluations (indexes/<run>/), maps that
        name it (indexes/_maps/<dataset>/<key>-<hash>.npy; a map key that merely could name it goes too:
        maps are caches) and the indexes in memory."""
        import re
        import shutil

        shutil.rmtree(self.workspace.indexes_dir / check_run_name(name), ignore_errors=True)
        token = "-" + re.sub(r"[^A-Za-z0-9._-]+", "_", name) + "-"
        for cached in (self.workspace.indexes_dir / MAPS_FOLDER).glob("*/*.npy"):
            if token in cached.name:
                cached.unlink(missing_ok=True)
        self._spaces.drop(lambda key: key[0] == name)

    def install_checkpoints(self, directory: str | Path | None = None) -> list[str]:
        """Shipped demo checkpoints as finished runs of this workspace, with the vectors shipped beside them
        put into the vector cache wherever the run's weights and the dataset are the ones they were computed
        on (core.shipped_vectors): the demo's first search then encodes nothing."""
        from core import shipped_vectors

        runs = self.runs.install_shipped(directory)
        directory = Path(directory) if directory is not None else shipped_checkpoints_dir()
        shipped_vectors.install_all(self.workspace, self.store, directory, runs)
        return runs

    def shipped_checkpoints(self) -> list[Path]:
        directory = shipped_checkpoints_dir()
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if p.is_dir() and (p / "config.json").is_file())


# ------------------------------------------------------------------------------------ the reproduction's claims
_CLAIM_STATEMENTS = {
    "1": "basic neglects the image: removing the image from basic's notes costs it nothing, removing the text does",
    "2": "mICL and late fusion each improve on basic",
    "3": "together (micl+late, NoteLLM-2) they are best: micl+late beats every other trained variant",
}
_TRAINED_OTHERS = ("text", "basic", "micl", "late", "basic+late")


def _shown_path(path: Path) -> str:
    from core.workspace import REPO_ROOT

    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _read_json(path: Path) -> dict:
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _reproduction_folder(root: Path, dataset: str) -> tuple[Path, bool] | None:
    """(folder, superseded) of the reproduction whose plan trained on `dataset`; a current one before one
    marked superseded in its RESULTS.md, one with per-query ranks before one without."""
    found = []
    for ablation in [root / "ablation.json", *sorted(root.glob("*/ablation.json")),
                     *sorted(root.glob("*weak-text/ablation.json")), *sorted(root.glob("*/weak-text/ablation.json"))]:
        plan = _read_json(ablation).get("plan") or {}
        trained_on = (plan.get("dataset") or "") + ("-weak-text" if plan.get("weak_text") else "")
        if not plan.get("dataset") or trained_on != dataset:
            continue
        folder = ablation.parent
        # The folder's own report first (`reproduce --results-dir` writes RESULTS.md; the repository keeps the
        # openclipart one as REPRODUCTION.md beside the hand-written RESULTS.md above it, whose opening
        # paragraph links the superseded table and must not mark the current one superseded).
        report = next((candidate for candidate in (folder / "RESULTS.md", folder / "REPRODUCTION.md")
                       if candidate.is_file()), folder.parent / "RESULTS.md")
        try:
            superseded = "superseded" in report.read_text()[:600].lower()
        except OSError:
            superseded = False
        found.append((superseded, not (folder / "per_query.json").is_file(), len(found), folder))
    if not found:
        return None
    superseded, _, _, folder = min(found)
    return folder, superseded


def _judge_claims(per_query: dict, saliency_batches: dict) -> tuple[tuple[Claim, ...], int]:
    """Claims 1-3 with their comparisons on all queries; p-values Holm-adjusted over every test the
    reproduction makes (all comparisons on every split, and the saliency comparisons)."""
    from core.claims import holm_verdicts, paired_comparisons, saliency_comparisons

    tests = holm_verdicts(paired_comparisons(per_query, k=PAPER_K, adjust=False)
                          + saliency_comparisons(saliency_batches))
    rows: dict = {}
    for test in tests:
        if test["split"] != "all":
            continue
        rows[(test["a"], test["b"])] = (test["claim"], ClaimComparison(
            label=test["label"].replace("`", ""), a=test["a"], b=test["b"], queries=test["queries"],
            difference=test["difference"], ci_low=test["ci_low"], ci_high=test["ci_high"],
            p_value=test["p_value"], p_holm=test["p_holm"], verdict=test["verdict"]))

    def row(a, b, ma="both", mb="both"):
        found = rows.get(((a, ma), (b, mb)))
        return found[1] if found else None

    claims = []
    image, text = row("basic", "basic", "both", "text"), row("basic", "basic", "both", "image")
    if image and text:
        outcome = ("does not hold" if image.verdict == "higher" else "holds" if text.verdict == "higher"
                   else "undecided")
        claims.append(Claim("1", _CLAIM_STATEMENTS["1"], outcome, (image, text)))
    remedies = [row(v, "basic") for v in ("micl", "late", "basic+late", "micl+late")]
    remedies = [r for r in remedies if r]
    if remedies:
        main = [r for r in remedies if r.a[0] in ("micl", "late")]
        outcome = ("not measured" if not main else "does not hold" if any(r.verdict == "lower" for r in main)
                   else "holds" if len(main) == 2 and all(r.verdict == "higher" for r in main) else "not shown")
        claims.append(Claim("2", _CLAIM_STATEMENTS["2"], outcome, tuple(remedies)))
    best = [r for r in (row("micl+late", v) for v in _TRAINED_OTHERS) if r]
    if best:
        outcome = ("holds" if all(r.verdict == "higher" for r in best) else
                   "does not hold" if any(r.verdict == "lower" for r in best) else "not shown")
        claims.append(Claim("3", _CLAIM_STATEMENTS["3"], outcome, tuple(best)))
    return tuple(claims), len(tests)
