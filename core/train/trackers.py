"""Experiment trackers for training runs, on accelerate's `GeneralTracker`s (`accelerate.tracking`).

`events.jsonl` is always written; a run started with `log_with="tensorboard,mlflow"` (the CLI's
`--log-with`) also sends every step's and every evaluation's numbers to those trackers. What they write
lives in the run folder where the tracker lets us choose:

    runs/<run>/tracking/tensorboard/   TensorBoard event files (`tensorboard --logdir runs/<run>/tracking`)
    runs/<run>/tracking/mlruns/        MLflow's file store, unless MLFLOW_TRACKING_URI points elsewhere
    trackio                            trackio's own local store (project "notellm2", run name = the run)

A tracker that is asked for but not installed is refused with one sentence before any training starts
(`check_trackers`), never half-way through a run.

This module does not import the trainer: `TrackerCallback` has the five hooks a training callback needs,
which is all the trainer asks of one, so the trainer can import this module without a cycle.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterable

from core.errors import WorkbenchError

TRACKING_DIR = "tracking"
PROJECT = "notellm2"

# name -> the pip package that provides it (what the error message tells the user to install)
TRACKERS: dict[str, str] = {"tensorboard": "tensorboard (or tensorboardX)", "trackio": "trackio",
                            "mlflow": "mlflow"}


def parse_trackers(log_with: str | Iterable[str] | None) -> tuple[str, ...]:
    """'tensorboard, mlflow' -> ('tensorboard', 'mlflow'): lower-cased, deduplicated, in the given order;
    an unknown name is refused with the ones that exist."""
    if not log_with:
        return ()
    parts = log_with.split(",") if isinstance(log_with, str) else list(log_with)
    names: list[str] = []
    for part in parts:
        name = str(part).strip().lower()
        if not name:
            continue
        if name not in TRACKERS:
            raise WorkbenchError(f"unknown tracker {name!r} in --log-with; choose from {', '.join(TRACKERS)}")
        if name not in names:
            names.append(name)
    return tuple(names)


def _installed(name: str) -> bool:
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_trackio_available

    return {"tensorboard": is_tensorboard_available, "trackio": is_trackio_available,
            "mlflow": is_mlflow_available}[name]()


def check_trackers(log_with: str | Iterable[str] | None) -> tuple[str, ...]:
    """The trackers asked for, each known and installed; otherwise one sentence that says what to install."""
    names = parse_trackers(log_with)
    missing = [name for name in names if not _installed(name)]
    if missing:
        packages = " ".join(TRACKERS[name].split(" ")[0] for name in missing)
        raise WorkbenchError(f"tracker{'s' if len(missing) > 1 else ''} {', '.join(missing)} asked for in "
                             f"--log-with but not installed; pip install {packages}, or drop "
                             f"{'them' if len(missing) > 1 else 'it'} from --log-with")
    return names


def build_tracker(name: str, run: str, tracking_dir: Path, resuming: bool = False):
    """An accelerate GeneralTracker for `name`, writing under `tracking_dir` where the tracker allows;
    `resuming` continues the run's trackio run rather than starting a second one of the same name."""
    from accelerate import tracking

    if name == "tensorboard":
        # tensorboardX names an event file by the second it opened and the host only: a resume (or any second
        # writer) within the same second would truncate the first one's file. The suffix keeps each session's.
        return tracking.TensorBoardTracker("tensorboard", tracking_dir,
                                           filename_suffix=f".{os.getpid()}.{time.time_ns()}")
    if name == "mlflow":
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            # Without a tracking URI mlflow writes into the working directory; the run folder keeps the run
            # together (and a user's own server, set in the environment, still wins).
            mlflow.set_tracking_uri((tracking_dir / "mlruns").resolve().as_uri())
        return tracking.MLflowTracker(experiment_name=PROJECT, run_name=run,
                                      logging_dir=str((tracking_dir / "mlruns").resolve()))
    if name == "trackio":
        return tracking.TrackioTracker(PROJECT, name=run, resume="allow" if resuming else "never")
    raise WorkbenchError(f"unknown tracker {name!r}")


def metric_name(key) -> str:
    """A key as every tracker accepts it: MLflow allows only letters, digits and `_-./ `, and TensorBoard would
    turn the rest into underscores on its own (recall@10 -> recall_10); recall@10 -> recall_at_10 reads."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", str(key).replace("@", "_at_"))


def flatten_numbers(values: dict, prefix: str) -> dict[str, float]:
    """Numeric leaves of a (nested) row as 'prefix/key/subkey' -> float, names made safe (`metric_name`); text,
    None and lists are left out (events.jsonl keeps everything)."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}/{metric_name(key)}"
        if isinstance(value, bool):
            flat[name] = float(value)
        elif isinstance(value, (int, float)):
            flat[name] = float(value)
        elif isinstance(value, dict):
            flat.update(flatten_numbers(value, name))
    return flat


def _hyperparameters(config) -> dict:
    """The run's TrainConfig as scalars a tracker accepts (TensorBoard's hparams refuse None and lists)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(config).items() if isinstance(v, (bool, int, float, str))}


class TrackerCallback:
    """Sends each step's row (`train/...`) and each evaluation (`eval/...`) to the chosen trackers, keyed by
    the step; installed by the trainer in the main process only."""

    def __init__(self, names: Iterable[str]):
        self.names = tuple(names)
        self.trackers: list = []

    def on_start(self, trainer, start_step):
        tracking_dir = trainer.run_dir / TRACKING_DIR
        tracking_dir.mkdir(parents=True, exist_ok=True)
        self.trackers = [build_tracker(name, trainer.config.run, tracking_dir, resuming=start_step > 0)
                         for name in self.names]
        hyperparameters = _hyperparameters(trainer.config)
        for tracker in self.trackers:
            tracker.start()
            if start_step == 0:  # a resumed run keeps the configuration its start recorded
                tracker.store_init_configuration(hyperparameters)

    def on_step(self, trainer, row):
        values = flatten_numbers({k: v for k, v in row.items() if k not in ("step", "total")}, "train")
        for tracker in self.trackers:
            tracker.log(values, step=row["step"])

    def on_evaluate(self, trainer, metrics):
        values = flatten_numbers({k: v for k, v in metrics.items() if k != "step"}, "eval")
        for tracker in self.trackers:
            tracker.log(values, step=metrics.get("step", trainer.step))

    def on_checkpoint(self, trainer, step):
        pass

    def on_end(self, trainer, summary):
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.finish()
