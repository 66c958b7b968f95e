"""Contrastive fine-tuning of a NoteEncoder on a dataset's related pairs, on accelerate.

One process on CPU or one GPU here; `torchrun` / `accelerate launch` for many (configs/accelerate/ holds
DDP, FSDP and DeepSpeed ZeRO-3-with-CPU-offload configs like the reference). What a run leaves behind,
in WORKSPACE/runs/<run>/:

    config.json, model.safetensors   the NoteEncoder (save_pretrained layout): NoteEncoder.from_pretrained(run_dir)
    run.json                         train config + model config + dataset + split seed, and the run's state
    events.jsonl                     one JSON row per step (loss, lr, temperature, notes/s, ...) and per evaluation
    checkpoints/                     the last checkpoint, for --resume (see checkpoint.py)

Determinism: the batches of every step are a function of (seed, step) alone (a seeded shuffle per epoch,
packed so no note appears twice in one global batch: a duplicate would be its own false negative), so a
resumed run sees exactly the batches and learning rates an uninterrupted one would.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core.errors import WorkbenchError
from core.models.note_encoder import VARIANTS, NoteEncoder, NoteEncoderConfig
from core.runtime import configure_threads, resolve_device
from core.runs import EVENTS_FILE, RUN_FILE, read_run_file, write_run_file
from core.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from core.train.loss import ContrastiveLoss
from core.train.presets import get_preset
from core.workspace import Workspace



@dataclass
class TrainConfig:
    dataset: str
    variant: str
    run: str
    preset: str = "cpu"
    steps: int = 100
    batch_pairs: int = 16  # pairs per process; the global batch is batch_pairs x processes
    grad_accum: int = 1  # micro-batches per optimizer step (in-batch negatives stay per micro-batch)
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


# ---------------------------------------------------------------------------------------- the trainer
class StopRequested(Exception):
    pass


class Trainer:
    def __init__(self, workspace: Workspace | str | None, config: TrainConfig, model_config: NoteEncoderConfig,
                 resume: bool = False, init_from: str | None = None,
                 on_step: Callable[[dict], None] | None = None, progress_bar: bool = False):
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
        self.config = config
        self.model_config = model_config
        self.resume = resume
        self.init_from = init_from
        self.on_step = on_step
        self.progress_bar = progress_bar
        self.stop_requested = False
        self.run_dir = self.workspace.run_dir(config.run)

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
        config = self.config
        world, is_main = accelerator.num_processes, accelerator.is_main_process
        saved = self._prepare_run_dir(is_main)
        accelerator.wait_for_everyone()  # every process checks the folder before the main one creates it
        if saved is not None:
            config = self.config = TrainConfig.from_dict({**saved["train"], "device": self.config.device})
            self.model_config = NoteEncoderConfig.from_dict(saved["model"])
            if saved.get("world_size", world) != world:
                raise WorkbenchError(f"run '{config.run}' was trained with {saved['world_size']} processes; resume it "
                                     f"with the same number (the global batch and schedule depend on it)")
        split, notes_by_id = self._load_data(world)

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
        global_batch = config.batch_pairs * world
        lengths = None
        if config.length_buckets:
            tokens = {}
            for pair in split.train_pairs:
                for note_id in pair:
                    if note_id not in tokens:
                        tokens[note_id] = len(model.prompts.build(notes_by_id[note_id]).ids)
            lengths = [max(tokens[a], tokens[b]) for a, b in split.train_pairs]
        schedule = BatchSchedule(split.train_pairs, global_batch, config.seed, lengths, config.length_buckets)
        start_step = 0
        if saved is not None:
            checkpoint = latest_checkpoint(self.run_dir)
            if checkpoint is None:
                raise WorkbenchError(f"run '{config.run}' has no checkpoint to resume from")
            state = load_checkpoint(checkpoint, model, loss_module, optimizer, scheduler)
            start_step = state["step"]
            if start_step >= config.steps:
                raise WorkbenchError(f"run '{config.run}' is finished already ({start_step}/{config.steps} steps)")
        else:
            if model.needs_calibration:
                # Calibrate the late-fusion image projection and the state offset on the first *global* batch,
                # before DDP wraps the model: every process then starts from the same weights as a one-process
                # run would.
                with torch.no_grad():
                    self._forward(model, features, schedule.batch(0), notes_by_id)
            if is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                write_run_file(self.run_dir, {
                    "run": config.run, "dataset": config.dataset, "variant": config.variant, "preset": config.preset,
                    "split_seed": config.split_seed, "test_fraction": config.test_fraction,
                    "distractor_fraction": config.distractor_fraction, "world_size": world,
                    "train": asdict(config), "model": self.model_config.to_dict(), "status": "running",
                    "step": 0, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
                (self.run_dir / EVENTS_FILE).write_text("")
        if is_main and saved is not None:
            self._truncate_events(start_step)
            self._update_run(status="running")

        if saved is None and config.eval_every and is_main:
            # Recall before any training: the baseline every later evaluation is read against.
            metrics = {"step": 0, **self.held_out_recall(model, split, notes_by_id, features)}
            self._image_path_check(metrics, [], world)
            self._event({"event": "eval", **metrics})
        visual_losses: list[float] = []  # mICL image-side loss since the last evaluation
        wrapped, optimizer = accelerator.prepare(model, optimizer)
        accelerator.wait_for_everyone()

        previous = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
        if self._can_handle_signals():
            signal.signal(signal.SIGTERM, self._request_stop)
            signal.signal(signal.SIGINT, self._request_stop)
        bar = None
        if self.progress_bar and is_main:
            from tqdm import tqdm

            bar = tqdm(total=config.steps, initial=start_step, desc=f"train {config.run}", unit="step")
        step = start_step
        summary: dict = {}
        try:
            for step in range(start_step + 1, config.steps + 1):
                row = self._train_step(step, wrapped, model, loss_module, optimizer, scheduler, schedule, features,
                                       accelerator, notes_by_id)
                if is_main:
                    self._event(row)
                if "visual_loss" in row:
                    visual_losses.append(row["visual_loss"])
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", t=f"{row['temperature']:.3f}")
                    bar.update(1)
                last = step == config.steps
                if config.eval_every and step % config.eval_every == 0 or last:
                    if is_main:
                        metrics = {"step": step, **self.held_out_recall(model, split, notes_by_id, features)}
                        self._image_path_check(metrics, visual_losses, world)
                        self._event({"event": "eval", **metrics})
                        row.update({"eval": metrics})
                    visual_losses = []
                    accelerator.wait_for_everyone()
                if step % config.checkpoint_every == 0 or last:
                    self._checkpoint(step, model, loss_module, optimizer, scheduler, accelerator)
                if self.on_step is not None and is_main:
                    self.on_step(row)
                if self.stop_requested and not last:
                    if step % config.checkpoint_every:
                        self._checkpoint(step, model, loss_module, optimizer, scheduler, accelerator)
                    raise StopRequested()
            summary = {"run": config.run, "status": "finished", "step": step, "steps": config.steps,
                       "run_dir": str(self.run_dir)}
            if is_main:
                self._update_run(status="finished", step=step)
        except StopRequested:
            if is_main:
                self._event({"step": step, "event": "cancelled"})
                self._update_run(status="cancelled", step=step)
            summary = {"run": config.run, "status": "cancelled", "step": step, "steps": config.steps,
                       "run_dir": str(self.run_dir)}
        finally:
            if bar is not None:
                bar.close()
            if self._can_handle_signals():
                signal.signal(signal.SIGTERM, previous[0])
                signal.signal(signal.SIGINT, previous[1])
        return summary

    @staticmethod
    def _can_handle_signals() -> bool:
        import threading

        return threading.current_thread() is threading.main_thread()

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True

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

    def _train_step(self, step, wrapped, model, loss_module, optimizer, scheduler, schedule, features, accelerator,
                    notes_by_id) -> dict:
        config = self.config
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
            with context:
                output = self._forward(wrapped, features, local, notes_by_id)
                real_tokens, positions = real_tokens + self._tokens[0], positions + self._tokens[1]
                losses = loss_module(output.embedding, output.visual_embedding)
                loss = losses["loss"]
                if not torch.isfinite(loss.detach()).item():
                    self._non_finite(step, loss.item(), accelerator)
                # Every process computes the whole global loss through its own shard; DDP averages over the
                # processes, so scale by their number to get the one-process gradient of the global batch.
                accelerator.backward(loss * world / config.grad_accum)
            for key in totals:
                if key in losses:
                    totals[key] += losses[key].item() / config.grad_accum
            if output.gate is not None:
                gate = output.gate.detach().float().mean().item()
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
        latest = latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint ({latest.name}) is kept" if latest else "no checkpoint was written yet"
        message = f"{what} became {value} at step {step}; training stopped, {kept}. Lower the learning rates."
        if accelerator.is_main_process:
            self._event({"step": step, "event": "stopped", "reason": message})
            self._update_run(status="failed", message=message)
        raise WorkbenchError(message)

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
            self._update_run(step=step, checkpoint_step=step)
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
        when the path looks broken (in events.jsonl, and on the terminal)."""
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
            if self.progress_bar:
                from tqdm import tqdm

                tqdm.write(f"step {metrics.get('step')}: {verdict}")

    # ------------------------------------------------------------------------------------- records
    def _event(self, row: dict) -> None:
        with open(self.run_dir / EVENTS_FILE, "a") as f:
            f.write(json.dumps({"time": time.time(), **row}) + "\n")

    def _truncate_events(self, step: int) -> None:
        """Drop rows a killed process wrote after its last checkpoint: the resumed run writes them again."""
        path = self.run_dir / EVENTS_FILE
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

    def _update_run(self, **changes) -> None:
        data = read_run_file(self.run_dir)
        data.update(changes)
        data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_run_file(self.run_dir, data)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def train(workspace, dataset: str | None, variant: str | None, run: str, preset: str = "cpu", steps: int = 100,
          resume: bool = False, init_from: str | None = None, on_step=None, progress_bar: bool = False,
          **overrides) -> dict:
    """Build the configs of a preset with overrides and train (or resume) a run.

    On resume the run's own run.json decides everything but the device; the other arguments are ignored."""
    if resume:
        workspace = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
        Trainer.check_run_name(run)
        run_file = workspace.run_dir(run) / RUN_FILE
        if not run_file.exists():
            raise WorkbenchError(f"run '{run}' has nothing to resume (no {run_file})")
        saved = read_run_file(workspace.run_dir(run))
        config = TrainConfig.from_dict({**saved["train"], "device": overrides.get("device") or saved["train"]["device"]})
        return Trainer(workspace, config, NoteEncoderConfig.from_dict(saved["model"]), resume=True,
                       on_step=on_step, progress_bar=progress_bar).run()
    if not dataset:
        raise WorkbenchError("--dataset is required (unless --resume)")
    if not variant:
        raise WorkbenchError("--variant is required (unless --resume)")
    train_defaults, model_config = preset_configs(preset, variant, **overrides)
    train_values = {**train_defaults, "steps": steps}
    config = TrainConfig(dataset=dataset, variant=variant, run=run, preset=preset, **train_values)
    return Trainer(workspace, config, model_config, resume=resume, init_from=init_from, on_step=on_step,
                   progress_bar=progress_bar).run()
