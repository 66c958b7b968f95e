"""The run store: the one owner of WORKSPACE/runs/<run>/run.json.

A run folder is written by the trainer (run.json, model.safetensors, events.jsonl, checkpoints) or installed
from a shipped demo checkpoint. Everything else reads a run through here, as a frozen `RunRecord`, so the
layout of run.json is known in one place.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from core.errors import WorkbenchError
from core.workspace import REPO_ROOT, Workspace, check_run_name

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EVENTS_FILE = "events.jsonl"
SHIPPED_MARKER = "shipped.json"
SHIPPED_FILES = (CONFIG_FILE, WEIGHTS_FILE, RUN_FILE, EVENTS_FILE, "eval.json")
SHIPPED_CHECKPOINTS = REPO_ROOT / "assets" / "checkpoints"
DEFAULT_SPLIT_SEED = 0
DEFAULT_TEST_FRACTION = 0.2  # what run.json files written before splits were recorded used


def shipped_checkpoints_dir() -> Path:
    """Shipped demo checkpoints; NOTELLM2_CHECKPOINTS points elsewhere (the app tests keep to tiny runs)."""
    return Path(os.environ.get("NOTELLM2_CHECKPOINTS") or SHIPPED_CHECKPOINTS)


def write_json_atomic(path: Path, data) -> None:
    """Readers never see half a file: write beside it, then rename over it."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(data, indent=2))
    os.replace(staging, path)


def read_run_file(folder: Path) -> dict:
    """run.json of any run-shaped folder: a workspace run, or a shipped checkpoint beside the repository."""
    path = Path(folder) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise WorkbenchError(f"'{Path(folder).name}' has no readable run.json") from None


def write_run_file(folder: Path, info: dict) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(folder) / RUN_FILE, info)


@dataclass(frozen=True)
class RunRecord:
    """A run as the rest of the workbench sees it. `info` keeps the whole run.json, read-only."""
    run: str
    dataset: str
    variant: str
    status: str
    step: int
    total_steps: int
    preset: str
    split_seed: int
    test_fraction: float
    created_at: str
    updated_at: str
    has_weights: bool
    info: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    shipped: bool = False  # installed from a shipped demo checkpoint: start-up reinstalls it, so it is kept

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @classmethod
    def from_info(cls, info: dict, has_weights: bool, shipped: bool = False) -> "RunRecord":
        train = info.get("train") or {}
        return cls(run=str(info.get("run", "")), dataset=str(info.get("dataset") or ""),
                   variant=str(info.get("variant") or ""), status=str(info.get("status") or "unknown"),
                   step=int(info.get("step") or 0), total_steps=int(train.get("steps") or 0),
                   preset=str(info.get("preset") or ""),
                   split_seed=int(info.get("split_seed", DEFAULT_SPLIT_SEED)),
                   test_fraction=float(info.get("test_fraction", DEFAULT_TEST_FRACTION)),
                   created_at=str(info.get("created_at") or ""), updated_at=str(info.get("updated_at") or ""),
                   has_weights=has_weights, info=MappingProxyType(dict(info)), shipped=shipped)


# The image-path figures a run's evaluations carry (core.analysis.image_path and the trainer's check).
IMAGE_PATH_FIGURES = ("zs_image_r10", "connector_probe_r10", "nv_r10", "connector_variation", "visual_loss",
                      "chance_loss")


@dataclass(frozen=True)
class RunSummary:
    """A run with what its events say: the last evaluation's figures, wall time, and whether a job holds it.
    `status` is the job's view when one holds the run ("running", "queued"), else run.json's, with a run
    that says "running" but has no job called "interrupted"."""
    record: RunRecord
    status: str
    wall_s: float | None
    recall10: float | None
    eval_step: int | None
    image_path: Mapping[str, float] = field(default_factory=dict)
    job_id: str = ""

    @property
    def run(self) -> str:
        return self.record.run

    @property
    def busy(self) -> bool:
        return bool(self.job_id)


def summarize(record: RunRecord, events: list[dict], active_job: str = "", job_state: str = "") -> RunSummary:
    """A `RunSummary` of a run and its events.jsonl rows (`read_events`)."""
    evals = [e for e in events if e.get("event") == "eval" and e.get("recall@10") is not None]
    last = evals[-1] if evals else None
    image_path: dict[str, float] = {}
    for row in reversed([e for e in events if e.get("event") == "eval"]):
        figures = row.get("image_path")
        if isinstance(figures, dict) and figures:
            image_path = {k: float(figures[k]) for k in IMAGE_PATH_FIGURES
                          if isinstance(figures.get(k), (int, float))}
            break
    times = [float(e["time"]) for e in events if isinstance(e.get("time"), (int, float))]
    wall = max(times) - min(times) if len(times) >= 2 else None
    if wall is None:
        try:
            wall = time.mktime(time.strptime(record.updated_at, "%Y-%m-%dT%H:%M:%S")) - \
                time.mktime(time.strptime(record.created_at, "%Y-%m-%dT%H:%M:%S"))
        except (ValueError, OverflowError):
            wall = None
    if active_job:
        status = job_state or "running"
    elif record.status == "running":
        status = "interrupted"
    else:
        status = record.status
    return RunSummary(record=record, status=status, wall_s=wall,
                      recall10=float(last["recall@10"]) if last else None,
                      eval_step=int(last.get("step") or 0) if last else None,
                      image_path=MappingProxyType(image_path), job_id=active_job)


class RunStore:
    def __init__(self, workspace: Workspace | str | os.PathLike | None = None):
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)

    # ------------------------------------------------------------------------------------ paths
    def folder(self, run: str) -> Path:
        return self.workspace.run_dir(run)

    def weights(self, run: str) -> Path:
        return self.folder(run) / WEIGHTS_FILE

    def exists(self, run: str) -> bool:
        return (self.folder(run) / RUN_FILE).is_file()

    def is_shipped(self, run: str) -> bool:
        return (self.folder(run) / SHIPPED_MARKER).is_file()

    def refuse_shipped(self, run: str, action: str) -> None:
        """A shipped demo run is neither deleted nor renamed: start-up installs it again under its name."""
        if self.is_shipped(run):
            raise WorkbenchError(f"run '{run}' is a shipped demo checkpoint: it is kept as it is (start-up "
                                 f"installs it again); nothing was {action}")

    def existing(self, run: str) -> Path:
        """The folder of a run that exists, through the workspace's one resolver (a name that is a path,
        a link or a zero-shot baseline is refused with a message that names no path)."""
        folder = self.workspace.resolve_variant(run)
        if isinstance(folder, str):
            raise WorkbenchError(f"'{run}' is a zero-shot baseline, not a trained run")
        return folder

    # ------------------------------------------------------------------------------------ reading
    def read(self, run: str) -> dict:
        """run.json as a dict; a clear error when the run is unknown or its file unreadable."""
        path = self.existing(run) / RUN_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise WorkbenchError(f"unknown run '{run}' (it has no readable run.json)") from None

    def get(self, run: str) -> RunRecord:
        info = self.read(run)
        try:
            return RunRecord.from_info(info, self.weights(run).exists(), self.is_shipped(run))
        except (TypeError, ValueError, AttributeError):
            raise WorkbenchError(f"run '{run}' has a malformed run.json") from None

    def all_runs(self) -> list[RunRecord]:
        """Every readable run, by folder name; a folder being written (no run.json yet) is left out."""
        records = []
        if not self.workspace.runs_dir.exists():
            return records
        for folder in sorted(self.workspace.runs_dir.iterdir()):
            if folder.name.startswith(".") or not (folder / RUN_FILE).exists():
                continue
            try:
                records.append(self.get(folder.name))
            except WorkbenchError as error:
                log.warning("skipping run folder %s: %s", folder, error)
        return records

    def events(self, run: str) -> list[dict]:
        """events.jsonl rows (a line cut by a crash is skipped)."""
        return read_events(self.existing(run))

    # ------------------------------------------------------------------------------------ writing
    def write(self, run: str, info: dict) -> None:
        write_run_file(self.folder(run), info)

    def update(self, run: str, **changes) -> dict:
        info = self.read(run)
        info.update(changes)
        info["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json_atomic(self.folder(run) / RUN_FILE, info)
        return info

    def delete(self, run: str) -> None:
        """Remove a run's folder (weights, checkpoints, events). The caller makes sure no job holds the run
        (`Workbench.delete_run` does). A shipped demo run is refused: start-up would install it again.

        The folder is first renamed to a hidden name in runs/ (one atomic step: the run is gone for every
        reader at once), then removed; a removal cut short leaves only a hidden folder nobody lists."""
        folder = self.existing(run)
        self.refuse_shipped(run, "deleted")
        doomed = self.workspace.runs_dir / f".deleting-{run}-{os.getpid()}-{time.time_ns()}"
        os.rename(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("deleted run %s", run)

    def rename(self, run: str, new: str) -> RunRecord:
        """Give a run another name: its folder moves and run.json says the new name (and the old one, in
        `renamed_from`), so a resumed run trains on in the new folder. The caller makes sure no job holds
        either name (`Workbench.rename_run` does). Refused: a new name that is not a plain run name (a
        path, a separator, '..', a flag, over 200 characters), one in use, and shipped demo runs."""
        if not isinstance(new, str):
            raise WorkbenchError("the new run name must be text")
        new = new.strip()
        folder = self.existing(run)
        check_run_name(new)
        if new == run:
            raise WorkbenchError(f"run '{run}' has that name already; nothing was renamed")
        self.refuse_shipped(run, "renamed")
        info = self.read(run)  # a run without a readable run.json is refused here, before anything moves
        target = self.folder(new)
        if target.exists() or target.is_symlink():
            raise WorkbenchError(f"a run called '{new}' exists already; choose another name")
        os.rename(folder, target)
        info["run"] = new
        if isinstance(info.get("train"), dict):
            info["train"] = {**info["train"], "run": new}  # what a resume reads its folder from
        info["renamed_from"] = run
        info["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json_atomic(target / RUN_FILE, info)
        log.info("renamed run %s to %s", run, new)
        return self.get(new)

    def install_shipped(self, directory: str | Path | None = None) -> list[str]:
        """Copy every shipped checkpoint under `directory` into the workspace as a finished run; returns the
        run names. Idempotent: a run whose weights already match is left alone; one installed from an earlier
        shipped version is replaced by the new one; a run of the same name trained locally is never
        overwritten."""
        directory = Path(directory) if directory is not None else shipped_checkpoints_dir()
        installed = []
        for folder in sorted(p for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []:
            if not all((folder / name).exists() for name in (CONFIG_FILE, WEIGHTS_FILE, RUN_FILE)):
                continue
            run = read_run_file(folder)["run"]
            target = self.folder(run)
            marker = target / SHIPPED_MARKER
            digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]
            if target.exists():
                if not marker.exists():
                    log.info("not installing shipped %s: a run of that name was trained here", run)
                    continue
                if json.loads(marker.read_text()).get("weights_sha256") == digest:
                    installed.append(run)
                    continue
                # Installed from an earlier shipped version, never trained here: the new weights replace it.
                # Its cached vectors and evaluations are keyed by the encoder's fingerprint, so none is reused.
                doomed = self.workspace.runs_dir / f".replacing-{run}-{os.getpid()}-{time.time_ns()}"
                os.rename(target, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                log.info("replacing %s, installed from an earlier shipped checkpoint", run)
            staging = Path(tempfile.mkdtemp(dir=self.workspace.runs_dir, prefix=f".{run}-"))
            for name in SHIPPED_FILES:
                if (folder / name).exists():
                    shutil.copy2(folder / name, staging / name)
            (staging / SHIPPED_MARKER).write_text(json.dumps({"source": str(folder), "weights_sha256": digest}))
            staging.rename(target)  # atomic: a half-copied run is never listed
            log.info("installed shipped checkpoint %s as run %s", folder.name, run)
            installed.append(run)
        return installed


def read_events(run_dir) -> list[dict]:
    """The events.jsonl rows of a run folder; a line cut by a crash is skipped."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
