"""CLI commands of the engine: train, encode, neighbors, eval (`python -m core <command> --help`).

Every bad request ends with a one-line reason and a non-zero exit (WorkbenchError, printed by core.cli);
progress goes to stderr with tqdm, results to stdout.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import fields

from core.cli import add_workspace_argument
from core.errors import WorkbenchError

_TRAIN_FIXED = {"dataset", "variant", "run", "preset", "steps", "device"}
# Options whose meaning the generic "(default from the preset)" would not tell.
_TRAIN_HELP = {"log_with": "experiment trackers besides events.jsonl, comma-separated: tensorboard, trackio, "
                           "mlflow (each must be installed; they write under WORKSPACE/runs/RUN/tracking/)"}


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


# Model options a training run may change (the rest of NoteEncoderConfig comes from the preset).
_MODEL_OPTIONS = {"llm": str, "vision": str, "llm_tuning": str, "lora_rank": int, "lora_alpha": int,
                  "connector": str, "num_query_tokens": int, "qformer_width": int, "qformer_layers": int,
                  "qformer_heads": int, "embedding_dim": int, "backbone_dtype": str, "image_preprocessing": str,
                  "center_states": _bool}


def register(subparsers) -> None:
    from core.train.presets import DEFAULT_PRESET, PRESET_TABLE, PRESETS
    from core.train.trainer import TrainConfig

    p = subparsers.add_parser("train", help="fine-tune a variant on a dataset's pairs (or --resume a run)")
    p.add_argument("--dataset", help="dataset name (see `datasets`)")
    p.add_argument("--variant", help="text, basic, micl, late, basic+late, micl+late")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    # --run-name is the same option: under torchrun, `--run` is refused as an ambiguous prefix of its --run-path.
    p.add_argument("--run", "--run-name", dest="run", required=True, help="run name: the folder WORKSPACE/runs/RUN")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS,
                   help="; ".join(f"{preset.name}: {preset.description}" for preset in PRESET_TABLE))
    p.add_argument("--resume", action="store_true", help="continue RUN from its last checkpoint")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--init-from", help="start from the weights of this checkpoint folder (same architecture)")
    p.add_argument("--job", help=argparse_hidden())
    p.add_argument("--spec", help=argparse_hidden())  # a worker's whole request as JSON (core.service.training_spec)
    for f in fields(TrainConfig):
        if f.name in _TRAIN_FIXED:
            continue
        kind = _bool if isinstance(f.default, bool) else type(f.default)
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None,
                       help=_TRAIN_HELP.get(f.name, f"(default from the preset; {f.default!r} otherwise)"))
    for name, kind in _MODEL_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help="model option")
    p.add_argument("--fixed-temperature", action="store_true", help="keep t at --temperature-init")
    add_workspace_argument(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("encode", help="encode a dataset with a run or zero-shot baseline (cached)")
    # --run-name is the same option: under torchrun, `--run` is refused as an ambiguous prefix of its --run-path.
    p.add_argument("--run", "--run-name", dest="run", required=True, help="run name or zs-text, zs-image, zs-concat, zs-llm")
    p.add_argument("--dataset", required=True)
    p.add_argument("--modality", default="both", choices=("both", "image", "text"))
    p.add_argument("--shard-notes", type=int, default=None, help="notes per shard (default 1024); under torchrun "
                   "or accelerate launch each process encodes every world-size-th shard")
    p.add_argument("--job", help=argparse_hidden())
    add_workspace_argument(p)
    p.set_defaults(func=cmd_encode)

    p = subparsers.add_parser("neighbors", aliases=["neighbours"], help="nearest notes of a note under a run or baseline")
    p.add_argument("--run", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--note", required=True, help="note id")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--modality", default="both", choices=("both", "image", "text"))
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_workspace_argument(p)
    p.set_defaults(func=cmd_neighbours)

    p = subparsers.add_parser("eval", help="Recall@k on the held-out pairs; prints one JSON object")
    p.add_argument("--run", required=True, help="run name or zs-text, zs-image, zs-concat, zs-llm")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test", choices=("test", "train", "all"))
    p.add_argument("--modality", default="both", choices=("both", "image", "text"))
    p.add_argument("--seed", type=int, default=0, help="tie-breaking and bootstrap seed")
    p.add_argument("--no-cache", action="store_true", help="recompute even if a cached result matches")
    p.add_argument("--protocol", default="distractors", choices=("distractors", "targets"),
                   help="candidate pool: every held-out non-query note (default) or the targets only")
    add_workspace_argument(p)
    p.set_defaults(func=cmd_eval)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


def _tqdm_progress(description: str):
    """A (done, total) callback drawing the encoding's progress on stderr: a bar on a terminal, a plain line
    every few seconds in a log file (core.progress)."""
    from core.progress import ProgressCallback

    return ProgressCallback(desc=description, unit="note", file=sys.stderr, min_total=1)


def cmd_train(args) -> int:
    from core.jobs import JobReporter
    from core.train.trainer import TrainConfig, train

    reporter = JobReporter(args.workspace, args.job)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name not in _TRAIN_FIXED and getattr(args, f.name) is not None}
    overrides.update({name: getattr(args, name) for name in _MODEL_OPTIONS if getattr(args, name) is not None})
    if args.fixed_temperature:
        overrides["learn_temperature"] = False
    if args.device:
        overrides["device"] = args.device
    if args.spec:  # a worker: the request arrives whole, typed, from core.service.training_spec
        spec = json.loads(args.spec)
        if spec["run"] != args.run:
            raise WorkbenchError(f"the job spec is for run '{spec['run']}', not '{args.run}'")
        args.dataset, args.variant, args.preset, args.steps = spec["dataset"], spec["variant"], spec["preset"], spec["steps"]
        overrides.update(spec["overrides"])

    def on_step(row: dict) -> None:
        reporter.running(row["step"], row["total"], f"step {row['step']}/{row['total']} loss {row['loss']:.4f}")

    start, total = 0, args.steps
    if args.resume:  # the run's own step and total, not --steps' default
        from core.runs import RunStore

        try:
            record = RunStore(args.workspace).get(args.run)
            start, total = record.step, record.total_steps or total
        except WorkbenchError:
            pass  # train() below says what is wrong with the run
    reporter.running(start, total, "loading the model", force=True)
    try:
        summary = train(args.workspace, args.dataset, args.variant, args.run, preset=args.preset, steps=args.steps,
                        resume=args.resume, init_from=args.init_from, on_step=on_step, progress_bar=True,
                        **overrides)
    except WorkbenchError as error:
        reporter.end("failed", str(error))
        raise
    except BaseException as error:
        reporter.end("failed", f"{type(error).__name__}: {error}")
        raise
    reporter.end(summary["status"], f"{summary['status']} at step {summary['step']}/{summary['steps']}",
                 step=summary["step"])
    print(json.dumps(summary))
    return 0 if summary["status"] == "finished" else 3


def cmd_encode(args) -> int:
    """Fill the dataset's vector cache, in shards; under torchrun every process takes its share of the shards
    and rank 0 assembles the file (core.encode.fill_cache_sharded), so one process and many give the same file."""
    from core.encode import SHARD_NOTES, ProcessGroup, fill_cache_sharded
    from core.jobs import JobReporter
    from core.workbench import Workbench

    shard_notes = args.shard_notes or SHARD_NOTES
    if shard_notes < 1:
        raise WorkbenchError("--shard-notes must be positive")
    with ProcessGroup() as group:
        lead = group.rank == 0
        reporter = JobReporter(args.workspace, args.job if lead else None)
        bar = _tqdm_progress(f"encode {args.dataset} with {args.run}" + (f" (rank 0 of {group.world})"
                                                                         if group.world > 1 else ""))

        def progress(done, total):
            bar(done, total)
            reporter.running(done, total, f"encoded {done}/{total} notes")

        try:
            reporter.running(0, 0, "loading the encoder", force=True)
            bench = Workbench(args.workspace)
            notes = bench.notes(args.dataset)
            cache = bench.vector_cache(args.run, args.dataset, args.modality)
            folder = cache.folder
            bench.encoder(args.run)  # loaded before the clock starts: encode_s is the encoding alone
            group.barrier()
            start = time.perf_counter()
            matrix = fill_cache_sharded(cache, notes, lambda todo, _: bench.encode(args.run, todo, args.modality),
                                        group, shard_notes, progress if lead else None)
            encode_s = time.perf_counter() - start
        except BaseException as error:
            reporter.end("failed", str(error) if isinstance(error, WorkbenchError) else f"{type(error).__name__}: {error}")
            raise
        if not lead:
            return 0
        reporter.end("finished", f"{len(notes)} vectors in {folder}", step=len(notes))
        print(json.dumps({"run": args.run, "dataset": args.dataset, "modality": args.modality, "notes": len(notes),
                          "dim": int(matrix.shape[1]) if matrix is not None and matrix.size else 0,
                          "processes": group.world, "encode_s": round(encode_s, 3),
                          "vectors": str(folder / f"{args.modality}.npy")}))
    return 0


def cmd_neighbours(args) -> int:
    from core.workbench import Workbench

    hits = Workbench(args.workspace).neighbours(args.run, args.dataset, note_id=args.note, k=args.k,
                                                modality=args.modality)
    for hit in hits:
        if args.json:
            print(json.dumps({"note_id": hit.note_id, "score": hit.score, "rank": hit.rank, "title": hit.note.title,
                              "category": hit.note.category}, ensure_ascii=False))
        else:
            print(f"{hit.rank:>3}  {hit.score:.4f}  {hit.note_id}  {hit.note.title[:60]}")
    return 0


def cmd_eval(args) -> int:
    from core.workbench import Workbench

    result = Workbench(args.workspace).evaluate(args.run, args.dataset, args.split, args.modality, args.seed,
                                                progress=_tqdm_progress(f"encode {args.dataset} with {args.run}"),
                                                use_cache=not args.no_cache, protocol=args.protocol)
    print(json.dumps(result.as_dict()))
    return 0
