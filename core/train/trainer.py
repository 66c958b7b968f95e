"""Contrastive fine-tuning of a NoteEncoder on a dataset's related pairs, on accelerate.

One process on CPU or one GPU here; `torchrun` / `accelerate launch` for many (configs/accelerate/ holds
DDP, FSDP and DeepSpeed ZeRO-3-with-CPU-offload configs like the reference). What a run leaves behind,
in WORKSPACE/runs/<run>/:

    config.json, model.safetensors   the NoteEncoder (save_pretrained layout): NoteEncoder.from_pretrained(run_dir)
    run.json                         train config + model config + dataset + split seed, and the run's state
    events.jsonl                     one JSON row per step (loss, lr, temperature, notes/s, ...) and per evaluation
    checkpoints/                     the last checkpoint, for --resume (see checkpoint.py)
    tracking/                        with `log_with` (--log-with): TensorBoard / MLflow logs (trackers.py)

Determinism: the batches of every step are a function of (seed, step) alone (a seeded shuffle per epoch,
packed so no note appears twice in one global batch: a duplicate would be its own false negative), so a
resumed run sees exactly the batches and learning rates an uninterrupted one would.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from core.errors import WorkbenchError
from core.models.note_encoder import VARIANTS, NoteEncoder, NoteEncoderConfig
from core.runtime import configure_threads, describe_machine, resolve_device
from core.runs import EVENTS_FILE, RUN_FILE, read_run_file, write_run_file
from core.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from core.train.grad_cache import cached_contrastive_step
from core.train.loss import ContrastiveLoss
from core.train.presets import DEFAULT_PRESET, get_preset
from core.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    dataset: str
    variant: str
    run: str
    preset: str = "cpu"
    steps: int = 100
    batch_pairs: int = 16  # pairs per process; the global batch is batch_pairs x processes
    grad_accum: int = 1  # micro-batches per optimizer step (in-batch negatives stay per micro-batch)
    # > 0: gradient caching (core/train/grad_cache.py) in chunks of this many pairs: a batch keeps all its
    # in-batch negatives at one chunk's activation memory, for a second forward pass. 0: off.
    grad_cache_chunk: int = 0
    lr_new: float = 1e-4  # connector, slot token, late fusion, head
    lr_llm: float = 2e-4  # LoRA adapters, or the whole LLM under full fine-tuning
    lr_temperature: float = 0.02  # the pilot saw t not move at 1e-3 in 100 steps
    learn_temperature: bool = True
    temperature_init: float = 3.0
    weight_decay: float = 0.001
    warmup_ratio: float = 0.1
    connector_warmup_steps: int = 0  # steps at the start where only the new modules learn (the LLM waits)
    max_grad_norm: float = 1.0
    note_weight: float = 9.0  # mICL: w_m
    visual_weight: float = 1.0  # mICL: w_v
    seed: int = 0
    split_seed: int = 0
    test_fraction: float = 0.2
    distractor_fraction: float = 0.1  # held-out notes that are nobody's target (core.data.splits)
    checkpoint_every: int = 50
    eval_every: int = 50  # held-out Recall@k every N steps (0: only at the end)
    eval_batch: int = 32
    # Batches drawn from windows of this many batches' pairs sorted by prompt length, so that a batch pads
    # little (0: plain shuffle). Pairs stay whole, and batch order is shuffled again after packing.
    length_buckets: int = 8
    lean_training: bool = True  # core/models/lora_train.py where it applies; False forces peft + transformers
    device: str = "auto"
    # Experiment trackers besides events.jsonl, comma-separated: tensorboard, trackio, mlflow
    # (core/train/trackers.py). Like the device, where a run reports is not part of what it learns: a resume
    # may change it.
    log_with: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        # A run saved before length bucketing existed resumes on the batches it started with.
        data = {"length_buckets": 0, **data}
        return cls(**{k: v for k, v in data.items() if k in known})


def preset_configs(preset: str, variant: str, **overrides) -> tuple[dict, NoteEncoderConfig]:
    """(TrainConfig defaults, model config) of a preset (core/train/presets.py); `overrides` go to whichever
    knows the name."""
    chosen = get_preset(preset)
    if variant not in VARIANTS:
        raise WorkbenchError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    model_fields = {f.name for f in fields(NoteEncoderConfig)}
    train_fields = {f.name for f in fields(TrainConfig)}
    model_overrides = {k: v for k, v in overrides.items() if k in model_fields and v is not None}
    model = chosen.model_config(variant, **model_overrides)
    unknown = sorted(set(overrides) - train_fields - model_fields)
    if unknown:
        raise WorkbenchError(f"unknown training option(s): {', '.join(unknown)}")
    train = dict(chosen.train)
    train.update({k: v for k, v in overrides.items() if k in train_fields and v is not None})
    return train, model


# ------------------------------------------------------------------------------------------- batches
def epoch_batches(pairs: list[tuple[str, str]], size: int, seed: int, epoch: int,
                  lengths: list[int] | None = None, buckets: int = 0) -> list[list[int]]:
    """Pair indices for every full batch of one epoch: a seeded shuffle, packed so that no note appears
    twice in a batch (a pair that would repeat a note waits for the next batch). The tail is dropped.

    With `lengths` (a pair's longer prompt, in tokens) and `buckets` > 0, each window of `buckets` batches'
    worth of shuffled pairs is sorted by length before packing, and the finished batches are shuffled:
    a batch holds pairs of similar length (little padding) while every batch still draws from the whole
    epoch in a random order."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(pairs)).tolist()
    if lengths is not None and buckets > 0:
        window = size * buckets
        order = [i for start in range(0, len(order), window)
                 for i in sorted(order[start:start + window], key=lambda i: lengths[i])]
    batches, carry, pointer = [], [], 0
    while True:
        batch, seen, waiting = [], set(), []

        def consider(index):
            a, b = pairs[index]
            if len(batch) < size and a not in seen and b not in seen and a != b:
                batch.append(index)
                seen.update((a, b))
            else:
                waiting.append(index)

        for index in carry:
            consider(index)
        while len(batch) < size and pointer < len(order):
            consider(order[pointer])
            pointer += 1
        if len(batch) < size:
            if lengths is not None and buckets > 0:
                batches = [batches[i] for i in rng.permutation(len(batches))]
            return batches
        batches.append(batch)
        carry = waiting


class BatchSchedule:
    """Global batch number -> pair indices, the same for every process and after any resume."""

    def __init__(self, pairs, size: int, seed: int, lengths: list[int] | None = None, buckets: int = 0):
        self.pairs, self.size, self.seed = pairs, size, seed
        self.lengths, self.buckets = lengths, buckets
        self._epochs: list[list[list[int]]] = []

    def _epoch(self, epoch: int) -> list[list[int]]:
        while len(self._epochs) <= epoch:
            self._epochs.append(epoch_batches(self.pairs, self.size, self.seed, len(self._epochs), self.lengths,
                                              self.buckets))
        return self._epochs[epoch]

    def batch(self, number: int) -> list[tuple[str, str]]:
        epoch = 0
        while True:
            batches = self._epoch(epoch)
            if not batches:
                raise WorkbenchError("no batch can be formed: every pair shares a note with the others")
            if number < len(batches):
                return [self.pairs[i] for i in batches[number]]
            number -= len(batches)
            epoch += 1


def lr_multiplier(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then linear decay to 0 at `total` (step counts from 0)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# -------------------------------------------------------------------------------------- callbacks
HOOKS = ("on_start", "on_step", "on_evaluate", "on_checkpoint", "on_end")


class TrainerCallback:
    """What a run tells the code that watches it. Subclass it and override the hooks you need (the others do
    nothing); any object with these five methods will do as well.

    Every hook gets the trainer first: `trainer.config`, `trainer.run_dir`, `trainer.is_main`, `trainer.step`,
    and `trainer.request_stop()`, which ends the run the way SIGTERM does (the current step finishes, a
    checkpoint is written, the run is "cancelled" and resumable).

    - on_start(trainer, start_step): the run folder is ready (0 for a new run, the checkpoint's step on resume)
    - on_step(trainer, row): after every optimizer step; `row` is the step's events.jsonl row (step, total,
      loss, lr, lrs, temperature, notes_per_s, ...)
    - on_evaluate(trainer, metrics): after every held-out evaluation (step 0 is the baseline before training);
      `metrics` is the eval row without its "event" key. Evaluation runs on the main process only, so this
      hook is called there only.
    - on_checkpoint(trainer, step): after a checkpoint of `step` is on disk, in every process
    - on_end(trainer, summary): once, last, in every run that reached on_start; summary["status"] is
      "finished" or "cancelled" (the run returns the summary), "failed" (a non-finite loss or a callback that
      raised; the run raises TrainingStopped after this hook, run.json says failed and the last checkpoint is
      kept), or "error" (an unexpected exception is on its way out; run.json is left as it was)

    Callbacks passed to the Trainer run in every process of a distributed run, after the built-in ones (which
    write only from the main process). A callback that asks to stop must ask in every process at the same
    step (deciding on the step number does): a process that stops alone leaves the others waiting.

    A callback that raises stops the run at once: the error is raised as `CallbackError` (a TrainingStopped,
    naming the callback and the hook, the original exception as its cause); run.json says "failed", a
    "stopped" row in events.jsonl gives the reason, and the last checkpoint is kept, so `--resume` continues
    from it as after any failure. Only an error in on_end leaves the run's end state as it was.
    """

    def on_start(self, trainer: "Trainer", start_step: int) -> None:
        pass

    def on_step(self, trainer: "Trainer", row: dict) -> None:
        pass

    def on_evaluate(self, trainer: "Trainer", metrics: dict) -> None:
        pass

    def on_checkpoint(self, trainer: "Trainer", step: int) -> None:
        pass

    def on_end(self, trainer: "Trainer", summary: dict) -> None:
        pass


class EventsFileCallback(TrainerCallback):
    """events.jsonl: one row per step, per evaluation, and for a cancelled or stopped run."""

    def on_start(self, trainer, start_step):
        if trainer.resume:
            self.truncate(trainer.run_dir, start_step)
        # One row per sitting: a run resumed elsewhere, or beside other work with fewer threads, keeps the
        # machine each stretch of its steps ran on, so a step time can be read against its hardware.
        self.write(trainer.run_dir, {"event": "start", "step": start_step, "processes": trainer.world,
                                     "machine": describe_machine()})

    def on_step(self, trainer, row):
        self.write(trainer.run_dir, row)

    def on_evaluate(self, trainer, metrics):
        self.write(trainer.run_dir, {"event": "eval", **metrics})

    def on_end(self, trainer, summary):
        if summary["status"] == "cancelled":
            self.write(trainer.run_dir, {"step": summary["step"], "event": "cancelled"})
        elif summary["status"] == "failed":
            self.write(trainer.run_dir, {"step": summary["step"], "event": "stopped", "reason": summary["message"]})

    @staticmethod
    def write(run_dir: Path, row: dict) -> None:
        with open(run_dir / EVENTS_FILE, "a") as f:
            f.write(json.dumps({"time": time.time(), **row}) + "\n")

    @staticmethod
    def truncate(run_dir: Path, step: int) -> None:
        """Drop rows a killed process wrote after its last checkpoint: the resumed run writes them again."""
        path = run_dir / EVENTS_FILE
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by kill -9
            if row.get("step", 0) <= step and row.get("event") not in ("cancelled", "stopped"):
                kept.append(line)
        staging = path.with_name(f".{path.name}.tmp")
        staging.write_text("".join(line + "\n" for line in kept))
        os.replace(staging, path)


class RunFileCallback(TrainerCallback):
    """run.json's state: running on resume, the step of every checkpoint, and how the run ended."""

    def on_start(self, trainer, start_step):
        if trainer.resume:
            self.update(trainer.run_dir, status="running")

    def on_checkpoint(self, trainer, step):
        self.update(trainer.run_dir, step=step, checkpoint_step=step)

    def on_end(self, trainer, summary):
        status = summary["status"]
        if status in ("finished", "cancelled"):
            self.update(trainer.run_dir, status=status, step=summary["step"])
        elif status == "failed":
            self.update(trainer.run_dir, status="failed", message=summary["message"])

    @staticmethod
    def update(run_dir: Path, **changes) -> None:
        data = read_run_file(run_dir)
        data.update(changes)
        data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_run_file(run_dir, data)


class ProgressBarCallback(TrainerCallback):
    """Progress with loss and temperature (a bar on a terminal, a plain line every few seconds in a log
    file: core.progress), and the image path's warning sentence."""

    def __init__(self):
        self.bar = None

    def on_start(self, trainer, start_step):
        from core.progress import progress_bar

        self.bar = progress_bar(total=trainer.config.steps, initial=start_step, desc=f"train {trainer.config.run}",
                                unit="step")

    def on_step(self, trainer, row):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", t=f"{row['temperature']:.3f}")
            self.bar.update(1)

    def on_evaluate(self, trainer, metrics):
        # The warning of an evaluation with image-path figures is the verdict of Trainer._image_path_check.
        if metrics.get("image_path") and metrics.get("warning"):
            from core.progress import write_line

            write_line(f"step {metrics.get('step')}: {metrics['warning']}")

    def on_end(self, trainer, summary):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StepFunctionCallback(TrainerCallback):
    """A plain function of each step's row (the `on_step=` argument: a job's progress, for one)."""

    def __init__(self, function: Callable[[dict], None]):
        self.function = function

    def on_step(self, trainer, row):
        self.function(row)


# ---------------------------------------------------------------------------------------- the trainer
class TrainingStopped(WorkbenchError):
    """The run cannot go on (a non-finite loss, a callback that raised): run.json says failed, the last
    checkpoint is kept."""


class CallbackError(TrainingStopped):
    """A callback raised; its exception is the cause."""


@dataclass
class _Session:
    """What one run trains with: built once by Trainer._setup, read by every step."""
    accelerator: Any
    model: NoteEncoder  # unwrapped: evaluation, checkpoints and calibration use it
    loss_module: ContrastiveLoss
    optimizer: Any  # accelerate's wrapper once prepared
    scheduler: Any
    features: Any
    schedule: BatchSchedule
    split: Any
    notes_by_id: dict
    wrapped: Any = None  # the model as accelerate prepared it (DDP in a distributed run)
    start_step: int = 0
    visual_losses: list = field(default_factory=list)  # mICL image-side loss since the last evaluation


class Trainer:
    """Trains one run. `callbacks` watch it (TrainerCallback); the built-in ones, installed first in the main
    process, write events.jsonl and run.json, draw the progress bar (`progress_bar`), call `on_step` and
    feed the experiment trackers of `config.log_with` (core/train/trackers.py)."""

    def __init__(self, workspace: Workspace | str | None, config: TrainConfig, model_config: NoteEncoderConfig,
                 resume: bool = False, init_from: str | None = None,
                 on_step: Callable[[dict], None] | None = None, progress_bar: bool = False,
                 callbacks: Sequence[TrainerCallback] = ()):
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
        self.config = config
        self.model_config = model_config
        self.resume = resume
        self.init_from = init_from
        self.on_step = on_step
        self.progress_bar = progress_bar
        for callback in callbacks:
            missing = [hook for hook in HOOKS if not callable(getattr(callback, hook, None))]
            if missing:
                raise WorkbenchError(f"training callback {type(callback).__name__} has no {', '.join(missing)}; "
                                     "subclass core.train.trainer.TrainerCallback")
        self.callbacks = list(callbacks)
        self.stop_requested = False
        self.run_dir = self.workspace.run_dir(config.run)
        self.world, self.is_main = 1, True
        self.step = 0  # the step being trained, or the last one (the checkpoint's step before the loop)
        self._installed: list = []

    # --------------------------------------------------------------------------------- preparation
    @staticmethod
    def check_run_name(run: str) -> None:
        if not run or run.startswith("zs-") or not all(c.isalnum() or c in "._-" for c in run) or run.startswith("."):
            raise WorkbenchError(f"bad run name {run!r}: use letters, digits, '.', '_' or '-' (and not the zs- prefix)")

    def _load_data(self, world: int):
        from core.data.splits import split_dataset
        from core.data.store import Store

        config = self.config
        store = Store(self.workspace)
        if not store.has_dataset(config.dataset):
            known = ", ".join(d.name for d in store.list_datasets()) or "none yet"
            raise WorkbenchError(f"unknown dataset '{config.dataset}' (datasets: {known})")
        pairs = store.pairs(config.dataset)
        if not pairs:
            raise WorkbenchError(f"dataset '{config.dataset}' has no pairs: training needs related pairs (pairs.csv)")
        split = split_dataset(store, config.dataset, config.test_fraction, config.split_seed,
                              config.distractor_fraction)
        global_batch = config.batch_pairs * world
        if len(split.train_pairs) < global_batch:
            raise WorkbenchError(f"dataset '{config.dataset}' has {len(split.train_pairs)} training pairs after the "
                                 f"test split, fewer than one batch of {global_batch} pairs; lower --batch-pairs")
        notes = {note.note_id: note for note in store.notes(config.dataset)}
        return split, notes

    def _prepare_run_dir(self, is_main: bool) -> dict | None:
        """Returns the saved run.json on resume."""
        run_file = self.run_dir / RUN_FILE
        if self.resume:
            if not run_file.exists():
                raise WorkbenchError(f"run '{self.config.run}' has nothing to resume ({self.run_dir} holds no {RUN_FILE})")
            return read_run_file(self.run_dir)
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise WorkbenchError(f"run folder {self.run_dir} exists already; pass --resume to continue it, "
                                 f"or choose another --run")
        return None

    def _optimizer(self, model: NoteEncoder, loss_module: ContrastiveLoss):
        config = self.config
        groups = model.trainable_groups()
        # Weight decay on matrices only: norms, biases, scales, query tokens and the slot vector are not
        # weights that overfit, and decaying the connector's output scale or the slot shrinks the image path.
        decayed = lambda params: [p for p in params if p.ndim == 2]
        kept = lambda params: [p for p in params if p.ndim != 2]
        param_groups = [
            {"name": "new_modules", "params": decayed(groups["new_modules"]), "lr": config.lr_new,
             "weight_decay": config.weight_decay},
            {"name": "new_modules_no_decay", "params": kept(groups["new_modules"]), "lr": config.lr_new,
             "weight_decay": 0.0},
            {"name": "llm", "params": decayed(groups["llm"]), "lr": config.lr_llm, "weight_decay": config.weight_decay},
            {"name": "llm_no_decay", "params": kept(groups["llm"]), "lr": config.lr_llm, "weight_decay": 0.0},
            {"name": "temperature", "params": [loss_module.temperature] if config.learn_temperature else [],
             "lr": config.lr_temperature, "weight_decay": 0.0},
        ]
        param_groups = [g for g in param_groups if g["params"]]
        optimizer = torch.optim.AdamW(param_groups, lr=config.lr_new, betas=(0.9, 0.999), eps=1e-8)
        warmup = int(math.ceil(config.warmup_ratio * config.steps))
        hold = config.connector_warmup_steps

        def multiplier(group_name: str):
            if group_name.startswith("llm") and hold > 0:
                # The LLM waits while the new modules learn to carry the picture, then warms up on its own.
                return lambda step: 0.0 if step < hold else lr_multiplier(step - hold, config.steps - hold,
                                                                           warmup)
            return lambda step: lr_multiplier(step, config.steps, warmup)

        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [multiplier(group["name"]) for group in optimizer.param_groups])
        return optimizer, scheduler

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> dict:
        """Train; returns the final summary. Raises WorkbenchError on bad input or a non-finite loss."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        config = self.config
        self.check_run_name(config.run)
        if config.steps < 1:
            raise WorkbenchError("--steps must be at least 1")
        if config.batch_pairs < 2:
            raise WorkbenchError("--batch-pairs must be at least 2 (in-batch negatives need another pair)")
        from core.train.trackers import check_trackers

        check_trackers(config.log_with)  # a missing tracker is one sentence now, not an error mid-run
        device = resolve_device(config.device)
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            configure_threads()  # under torchrun the processes share the cores: keep its OMP_NUM_THREADS
        accelerator = None
        try:
            accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
            return self._run(accelerator)
        finally:
            import torch.distributed as dist

            if accelerator is not None:
                try:
                    accelerator.end_training()
                except Exception:
                    pass
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()  # a group left open makes torchrun's processes abort at exit
            AcceleratorState._reset_state(True)

    def _run(self, accelerator) -> dict:
        self.world, self.is_main = accelerator.num_processes, accelerator.is_main_process
        saved = self._resume_state(accelerator)
        session = self._setup(accelerator, saved)
        if saved is None:
            self._calibrate(session)
            self._create_run_folder()
        else:
            self._restore(session)
        self._installed = self._default_callbacks() + self.callbacks
        try:
            self._notify("on_start", session.start_step)
            if saved is None and self.config.eval_every and self.is_main:
                self._evaluate(0, session)  # recall before any training: the baseline later ones are read against
            session.wrapped, session.optimizer = accelerator.prepare(session.model, session.optimizer)
            accelerator.wait_for_everyone()
            with self._stop_on_signals():
                summary = self._train_loop(session)
        except TrainingStopped as error:
            self._end(self._summary("failed", message=str(error)), propagating=error)
            raise
        except BaseException as error:
            self._end(self._summary("error", message=f"{type(error).__name__}: {error}"), propagating=error)
            raise
        self._end(summary)
        return summary

    # ------------------------------------------------------------------------------------- setup
    def _resume_state(self, accelerator) -> dict | None:
        """On resume, the saved run.json, whose configs then replace the given ones (all but the device)."""
        saved = self._prepare_run_dir(self.is_main)
        accelerator.wait_for_everyone()  # every process checks the folder before the main one creates it
        if saved is not None:
            self.config = TrainConfig.from_dict({**saved["train"], "device": self.config.device,
                                                 "log_with": self.config.log_with})
            self.model_config = NoteEncoderConfig.from_dict(saved["model"])
            if saved.get("world_size", self.world) != self.world:
                raise WorkbenchError(f"run '{self.config.run}' was trained with {saved['world_size']} processes; "
                                     f"resume it with the same number (the global batch and schedule depend on it)")
        return saved

    def _setup(self, accelerator, saved: dict | None) -> _Session:
        """Data, model, loss, optimizer, feature cache and the batch schedule, seeded."""
        config = self.config
        split, notes_by_id = self._load_data(self.world)

        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        model = NoteEncoder(self.model_config, device=accelerator.device)
        model.train()
        model.lean_training = config.lean_training
        if self.init_from and saved is None:
            model.load_weights(Path(self.init_from) / "model.safetensors")
        loss_module = ContrastiveLoss(config.temperature_init, config.learn_temperature, config.note_weight,
                                      config.visual_weight).to(accelerator.device)
        optimizer, scheduler = self._optimizer(model, loss_module)

        from core.encode import feature_cache_for

        features = feature_cache_for(model, self.workspace.root)
        schedule = self._batch_schedule(model, split, notes_by_id)
        return _Session(accelerator=accelerator, model=model, loss_module=loss_module, optimizer=optimizer,
                        scheduler=scheduler, features=features, schedule=schedule, split=split,
                        notes_by_id=notes_by_id)

    def _batch_schedule(self, model: NoteEncoder, split, notes_by_id) -> BatchSchedule:
        config = self.config
        lengths = None
        if config.length_buckets:
            tokens = {}
            for pair in split.train_pairs:
                for note_id in pair:
                    if note_id not in tokens:
                        tokens[note_id] = len(model.prompts.build(notes_by_id[note_id]).ids)
            lengths = [max(tokens[a], tokens[b]) for a, b in split.train_pairs]
        return BatchSchedule(split.train_pairs, config.batch_pairs * self.world, config.seed, lengths,
                             config.length_buckets)

    def _restore(self, session: _Session) -> None:
        """Model, loss, optimizer and scheduler from the run's last checkpoint."""
        config = self.config
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is None:
            raise WorkbenchError(f"run '{config.run}' has no checkpoint to resume from")
        state = load_checkpoint(checkpoint, session.model, session.loss_module, session.optimizer, session.scheduler)
        session.start_step = self.step = state["step"]
        if session.start_step >= config.steps:
            raise WorkbenchError(f"run '{config.run}' is finished already ({session.start_step}/{config.steps} steps)")

    def _calibrate(self, session: _Session) -> None:
        if session.model.needs_calibration:
            # Calibrate the late-fusion image projection and the state offset on the first *global* batch,
            # before DDP wraps the model: every process then starts from the same weights as a one-process
            # run would.
            with torch.no_grad():
                self._forward(session.model, session.features, session.schedule.batch(0), session.notes_by_id)

    def _create_run_folder(self) -> None:
        """run.json (configs, dataset, split, world size) and an empty events.jsonl, from the main process."""
        if not self.is_main:
            return
        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_run_file(self.run_dir, {
            "run": config.run, "dataset": config.dataset, "variant": config.variant, "preset": config.preset,
            "split_seed": config.split_seed, "test_fraction": config.test_fraction,
            "distractor_fraction": config.distractor_fraction, "world_size": self.world,
            "train": asdict(config), "model": self.model_config.to_dict(), "status": "running",
            "step": 0, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        (self.run_dir / EVENTS_FILE).write_text("")

    # ------------------------------------------------------------------------------------ the loop
    def _train_loop(self, session: _Session) -> dict:
        config = self.config
        for step in range(session.start_step + 1, config.steps + 1):
            self.step = step
            row = self._train_step(step, session)
            self._notify("on_step", row)
            if "visual_loss" in row:
                session.visual_losses.append(row["visual_loss"])
            last = step == config.steps
            if config.eval_every and step % config.eval_every == 0 or last:
                if self.is_main:
                    self._evaluate(step, session)
                session.visual_losses = []
                session.accelerator.wait_for_everyone()
            if step % config.checkpoint_every == 0 or last:
                self._save_checkpoint(step, session)
            if self.stop_requested and not last:
                if step % config.checkpoint_every:
                    self._save_checkpoint(step, session)
                return self._summary("cancelled")
        return self._summary("finished")

    def _summary(self, status: str, message: str | None = None) -> dict:
        summary = {"run": self.config.run, "status": status, "step": self.step, "steps": self.config.steps,
                   "run_dir": str(self.run_dir)}
        if message is not None:
            summary["message"] = message
        return summary

    def _evaluate(self, step: int, session: _Session) -> None:
        metrics = {"step": step, **self.held_out_recall(session.model, session.split, session.notes_by_id,
                                                        session.features)}
        self._image_path_check(metrics, session.visual_losses, self.world)
        self._notify("on_evaluate", metrics)

    def _save_checkpoint(self, step: int, session: _Session) -> None:
        self._checkpoint(step, session.model, session.loss_module, session.optimizer, session.scheduler,
                         session.accelerator)
        self._notify("on_checkpoint", step)

    # ------------------------------------------------------------------------------- callbacks, stop
    def _default_callbacks(self) -> list:
        """The run's own records, written from the main process only."""
        if not self.is_main:
            return []
        installed = [EventsFileCallback(), RunFileCallback()]
        if self.progress_bar:
            installed.append(ProgressBarCallback())
        if self.on_step is not None:
            installed.append(StepFunctionCallback(self.on_step))
        if self.config.log_with:
            from core.train.trackers import TrackerCallback, parse_trackers

            installed.append(TrackerCallback(parse_trackers(self.config.log_with)))
        return installed

    def _notify(self, hook: str, *args) -> None:
        """Call `hook` of every callback in order; the first that raises stops the run (CallbackError)."""
        for callback in self._installed:
            try:
                getattr(callback, hook)(self, *args)
            except Exception as error:
                what = f"training callback {type(callback).__name__}.{hook} raised {type(error).__name__}: {error}"
                if hook == "on_end":
                    raise CallbackError(f"{what} after the run ended ({args[0]['status']} at step {self.step})") \
                        from error
                raise CallbackError(f"{what} at step {self.step}; training stopped, {self._kept_checkpoint()}") \
                    from error

    def _end(self, summary: dict, propagating: BaseException | None = None) -> None:
        """on_end, once. While another exception is on its way out, a callback's own error is logged, not
        raised in its place."""
        if propagating is None:
            self._notify("on_end", summary)
            return
        try:
            self._notify("on_end", summary)
        except CallbackError:
            log.exception("a training callback failed while the run ended with %s", type(propagating).__name__)

    def request_stop(self) -> None:
        """End the run after the current step, with a checkpoint: the run is "cancelled" and resumable."""
        self.stop_requested = True

    @contextmanager
    def _stop_on_signals(self):
        """SIGTERM and SIGINT (a job's cancel, Ctrl-C) request a stop while the loop runs."""
        previous = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
        handles = self._can_handle_signals()
        if handles:
            signal.signal(signal.SIGTERM, self._request_stop)
            signal.signal(signal.SIGINT, self._request_stop)
        try:
            yield
        finally:
            if handles:
                signal.signal(signal.SIGTERM, previous[0])
                signal.signal(signal.SIGINT, previous[1])

    @staticmethod
    def _can_handle_signals() -> bool:
        import threading

        return threading.current_thread() is threading.main_thread()

    def _request_stop(self, signum, frame) -> None:
        self.request_stop()

    # ------------------------------------------------------------------------------------------ steps
    def _forward(self, model, features, pairs, notes_by_id):
        """Model output for a list of pairs laid out [first notes; partners]."""
        from core.features import model_features

        unwrapped = model.module if hasattr(model, "module") else model
        notes = [notes_by_id[a] for a, _ in pairs] + [notes_by_id[b] for _, b in pairs]
        batch = unwrapped.collate(notes)
        mask = batch["attention_mask"]
        self._tokens = (int(mask.sum()), mask.numel())  # real tokens and padded positions: the step's padding
        vision, has_image = model_features(unwrapped, features, batch["images"])
        return model(batch, vision=vision, has_image=has_image)

    def _train_step(self, step: int, session: _Session) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns the step's events.jsonl row."""
        config = self.config
        accelerator, wrapped, loss_module = session.accelerator, session.wrapped, session.loss_module
        optimizer, scheduler, schedule = session.optimizer, session.scheduler, session.schedule
        world, rank = accelerator.num_processes, accelerator.process_index
        started = time.perf_counter()
        totals = {"loss": 0.0, "note_loss": 0.0, "visual_loss": 0.0}
        gate = None
        real_tokens = positions = 0
        for micro in range(config.grad_accum):
            pairs = schedule.batch((step - 1) * config.grad_accum + micro)
            local = pairs[rank * config.batch_pairs:(rank + 1) * config.batch_pairs]
            sync = micro == config.grad_accum - 1
            context = accelerator.no_sync(wrapped) if not sync and world > 1 else _null()
            step_gate = None
            with context:
                if config.grad_cache_chunk:
                    def encode(module, chunk):
                        nonlocal real_tokens, positions  # both passes count; the padding share is unchanged
                        chunk_output = self._forward(module, session.features, chunk, session.notes_by_id)
                        real_tokens, positions = real_tokens + self._tokens[0], positions + self._tokens[1]
                        return chunk_output

                    cached = cached_contrastive_step(
                        wrapped, loss_module, local, encode, config.grad_cache_chunk,
                        loss_scale=world / config.grad_accum,
                        no_sync=(lambda: accelerator.no_sync(wrapped)) if world > 1 else None)
                    losses = cached.losses
                    if not torch.isfinite(losses["loss"].detach()).item():
                        self._non_finite(step, losses["loss"].item(), accelerator)
                    step_gate = cached.gate
                else:
                    output = self._forward(wrapped, session.features, local, session.notes_by_id)
                    real_tokens, positions = real_tokens + self._tokens[0], positions + self._tokens[1]
                    losses = loss_module(output.embedding, output.visual_embedding)
                    loss = losses["loss"]
                    if not torch.isfinite(loss.detach()).item():
                        self._non_finite(step, loss.item(), accelerator)
                    # Every process computes the whole global loss through its own shard; DDP averages over
                    # the processes, so scale by their number to get the one-process gradient of the global
                    # batch.
                    accelerator.backward(loss * world / config.grad_accum)
                    if output.gate is not None:
                        step_gate = output.gate.detach().float().mean().item()
            for key in totals:
                if key in losses:
                    totals[key] += losses[key].item() / config.grad_accum
            if step_gate is not None:
                gate = step_gate
        if loss_module.temperature.grad is not None and world > 1:
            loss_module.temperature.grad.div_(world)  # not under DDP: its gradient is already the global one
        grad_norm = None
        if config.max_grad_norm:
            grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), config.max_grad_norm)
            grad_norm = float(grad_norm) if grad_norm is not None else None
            if grad_norm is not None and not math.isfinite(grad_norm):
                self._non_finite(step, grad_norm, accelerator, what="gradient norm")
        lrs = {group.get("name", str(i)): group["lr"] for i, group in enumerate(optimizer.param_groups)}
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        notes = 2 * config.batch_pairs * world * config.grad_accum
        row = {"step": step, "total": config.steps, "loss": totals["loss"], "note_loss": totals["note_loss"],
               "lr": lrs.get("new_modules", next(iter(lrs.values()))), "lrs": lrs,
               "temperature": loss_module.temperature.item(), "scale": loss_module.scale,
               "notes_per_s": notes / elapsed if elapsed > 0 else None, "step_s": elapsed, "grad_norm": grad_norm,
               "padding_fraction": 1.0 - real_tokens / positions if positions else 0.0}
        if "visual_loss" in losses:
            row["visual_loss"] = totals["visual_loss"]
        if gate is not None:
            row["gate"] = gate
        return row

    def _non_finite(self, step: int, value: float, accelerator, what: str = "loss") -> None:
        message = (f"{what} became {value} at step {step}; training stopped, {self._kept_checkpoint()}. "
                   "Lower the learning rates.")
        raise TrainingStopped(message)  # recorded by the callbacks' on_end (events.jsonl, run.json)

    def _kept_checkpoint(self) -> str:
        latest = latest_checkpoint(self.run_dir)
        return f"the last good checkpoint ({latest.name}) is kept" if latest else "no checkpoint was written yet"

    def _checkpoint(self, step, model, loss_module, optimizer, scheduler, accelerator) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            folder = save_checkpoint(self.run_dir, step, unwrapped, loss_module, optimizer, scheduler,
                                     {"steps": self.config.steps})
            # The run root holds the latest weights in save_pretrained layout (hard links: no copy).
            for name in ("model.safetensors", "config.json"):
                staging = self.run_dir / f".{name}.{os.getpid()}.tmp"
                staging.unlink(missing_ok=True)
                try:
                    os.link(folder / name, staging)
                except OSError:
                    import shutil

                    shutil.copyfile(folder / name, staging)
                os.replace(staging, self.run_dir / name)
        accelerator.wait_for_everyone()

    # --------------------------------------------------------------------------------- evaluation
    def held_out_recall(self, model: NoteEncoder, split, notes_by_id, features) -> dict:
        from core.encode import encode_notes
        from core.evaluate import evaluate_vectors

        ids = [n for n in split.test_note_ids if n in notes_by_id]
        if not ids or not split.test_pairs:
            return {"warning": "no test pairs"}
        vectors = encode_notes(model, [notes_by_id[n] for n in ids], batch_size=self.config.eval_batch,
                               workspace_root=self.workspace.root)
        model.train()
        result = evaluate_vectors((ids, vectors), split.test_pairs, split.subsets(), ids, seed=0)
        keep = {k: v for k, v in result.items() if k.startswith("recall@") or k in ("queries", "pool", "mean_rank")}
        if model.vision is not None:
            from core.analysis.image_path import image_path_health

            keep["image_path"] = image_path_health(model, [notes_by_id[n] for n in ids], split.test_pairs,
                                                   features=features, batch_size=self.config.eval_batch)
            model.train()
        return keep

    def _image_path_check(self, metrics: dict, visual_losses: list[float], world: int) -> None:
        """Adds the mICL visual loss against chance to the evaluation's image-path figures, and a sentence
        (metrics["warning"]) when the path looks broken: events.jsonl keeps it, the progress bar prints it."""
        from core.analysis.image_path import chance_loss, health_verdict

        health = metrics.get("image_path")
        if not health:
            return
        health["chance_loss"] = chance_loss(self.config.batch_pairs * world)
        if visual_losses:
            health["visual_loss"] = float(np.mean(visual_losses))
        warm = metrics.get("step", 0) > max(1, self.config.warmup_ratio * self.config.steps)
        verdict = health_verdict(health, health.get("visual_loss") if warm else None, health["chance_loss"])
        if verdict:
            metrics["warning"] = verdict


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def train(workspace, dataset: str | None, variant: str | None, run: str, preset: str = DEFAULT_PRESET,
          steps: int = 100, resume: bool = False, init_from: str | None = None, on_step=None,
          progress_bar: bool = False, callbacks: Sequence[TrainerCallback] = (), **overrides) -> dict:
    """Build the configs of a preset with overrides and train (or resume) a run; `callbacks` watch it.

    On resume the run's own run.json decides everything but the device; the other training arguments are
    ignored."""
    if resume:
        workspace = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
        Trainer.check_run_name(run)
        run_file = workspace.run_dir(run) / RUN_FILE
        if not run_file.exists():
            raise WorkbenchError(f"run '{run}' has nothing to resume (no {run_file})")
        saved = read_run_file(workspace.run_dir(run))
        config = TrainConfig.from_dict({**saved["train"], "device": overrides.get("device") or saved["train"]["device"],
                                        "log_with": overrides.get("log_with") or saved["train"].get("log_with", "")})
        return Trainer(workspace, config, NoteEncoderConfig.from_dict(saved["model"]), resume=True,
                       on_step=on_step, progress_bar=progress_bar, callbacks=callbacks).run()
    if not dataset:
        raise WorkbenchError("--dataset is required (unless --resume)")
    if not variant:
        raise WorkbenchError("--variant is required (unless --resume)")
    train_defaults, model_config = preset_configs(preset, variant, **overrides)
    train_values = {**train_defaults, "steps": steps}
    config = TrainConfig(dataset=dataset, variant=variant, run=run, preset=preset, **train_values)
    return Trainer(workspace, config, model_config, resume=resume, init_from=init_from, on_step=on_step,
                   progress_bar=progress_bar, callbacks=callbacks).run()
