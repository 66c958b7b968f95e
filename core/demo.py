"""Demo checkpoints: the trained variants `python launch.py` opens with, shipped in assets/checkpoints/.

`python -m core build-demo` trains every variant on the bundled sample (resumable) and exports only what
training produced (connector, slot vector, gate, head, LoRA; large matrices int8 per row) with the run's
metadata and events; each export is then installed, encodes the sample in every modality (the vectors ship
beside it, core.shipped_vectors, so the demo's first search encodes nothing) and is evaluated on the sample's
test split, so the eval.json beside it measures exactly the shipped weights. `install_checkpoints` turns such
a folder into finished runs of a workspace, so every tab lists them like any run trained there.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from core.errors import WorkbenchError
from core.models.note_encoder import CONFIG_FILE, VARIANTS, WEIGHTS_FILE
from core.runs import RUN_FILE, SHIPPED_CHECKPOINTS, RunStore, read_run_file, write_run_file
from core.workspace import REPO_ROOT, Workspace

CHECKPOINTS_DIR = SHIPPED_CHECKPOINTS
DEMO_DATASET = "sample"
# The demo ships the text baseline and the headline pair (the basic MLRM and NoteLLM-2): three full-budget
# runs fit the tracked tree's size and one sitting's CPU, where six short ones did neither well. Any other
# variant trains in the Fine-tune tab or with `build-demo --variants`.
DEMO_VARIANTS = ("text", "basic", "micl+late")
DEMO_STEPS = 144  # three epochs of the sample's 766 training pairs at 16 pairs per step


def demo_run_name(variant: str) -> str:
    return "demo-" + variant.replace("+", "-")


def install_checkpoints(workspace, directory: str | Path = CHECKPOINTS_DIR) -> list[str]:
    """Every shipped checkpoint under `directory` as a finished run of the workspace, with its shipped vectors
    where they fit (the Workbench does it, as at the app's start-up)."""
    from core.workbench import Workbench

    return Workbench(workspace).install_checkpoints(directory)


def export_checkpoint(workspace: Workspace, run: str, out: Path, evaluation: dict | None = None,
                      shipped_name: str | None = None) -> Path:
    """Only trained weights (large matrices int8 per row, the rest bf16), plus metadata, events, evaluation."""
    import torch

    from core.models.note_encoder import NoteEncoder

    source = workspace.run_dir(run)
    model = NoteEncoder.from_pretrained(source, device="cpu")
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, dtype=torch.bfloat16, int8=True)
    info = RunStore(workspace).read(run)
    if shipped_name:
        info["trained_as"], info["run"] = info["run"], shipped_name
    write_run_file(out, info)
    if (source / "events.jsonl").exists():
        shutil.copy2(source / "events.jsonl", out / "events.jsonl")
    if evaluation is not None:
        (out / "eval.json").write_text(json.dumps(evaluation, indent=1))
    return out


def build_demo_checkpoints(workspace: Workspace, out: Path = CHECKPOINTS_DIR, steps: int = DEMO_STEPS,
                           preset: str = "cpu", variants: tuple[str, ...] = DEMO_VARIANTS,
                           extra_args: tuple[str, ...] = (),
                           log=print) -> list[Path]:
    """Train (or reuse) seed 0 of each variant on the sample under the reproduction's run names, so
    `python -m core reproduce --dataset sample` with the same steps and preset reuses these runs and writes
    the sample's ablation table without training them again."""
    from core.data.sample import ensure_sample_dataset
    from core.reproduce import ReproducePlan
    from core.service import run_info

    ensure_sample_dataset(workspace)
    plan = ReproducePlan(dataset=DEMO_DATASET, steps=steps, preset=preset)
    written = []
    for variant in variants:
        run = plan.run_name(variant, 0)
        folder = workspace.run_dir(run)
        finished = folder.exists() and run_info(workspace, run).get("status") == "finished"
        if not finished:
            command = [sys.executable, "-m", "core", "train", "--workspace", str(workspace.root), "--dataset",
                       DEMO_DATASET, "--variant", variant, "--steps", str(steps), "--run", run, "--preset", preset,
                       "--seed", "0", "--batch-pairs", str(plan.batch_pairs),
                       *(["--resume"] if folder.exists() else []), *extra_args]
            log("$ python " + " ".join(command[1:]))
            if subprocess.run(command, cwd=REPO_ROOT).returncode != 0:
                raise WorkbenchError(f"training {run} failed; rerun build-demo to resume it")
        written.append(export_checkpoint(workspace, run, out / variant, shipped_name=demo_run_name(variant)))
    write_shipped_vectors(workspace, out, log=log)
    evaluate_shipped(workspace, out, log)
    return written


def write_shipped_vectors(workspace: Workspace, directory: Path = CHECKPOINTS_DIR, dataset: str = DEMO_DATASET,
                          log=print) -> list[Path]:
    """Encode the sample with every shipped checkpoint under `directory`, in every modality, and write the
    vectors beside it (core.shipped_vectors): a fresh workspace then serves its first search on the demo
    variants from them instead of encoding the sample first. The checkpoints are installed as runs first,
    so the vectors come from exactly the shipped weights."""
    from core import shipped_vectors
    from core.data.sample import ensure_sample_dataset
    from core.workbench import MODALITIES, Workbench

    ensure_sample_dataset(workspace)
    bench = Workbench(workspace)
    runs = set(bench.install_checkpoints(directory))
    notes = bench.notes(dataset)
    written = []
    for folder in sorted(p for p in Path(directory).iterdir() if (p / RUN_FILE).is_file()):
        run = read_run_file(folder)["run"]
        if run not in runs:
            continue
        vectors = {}
        for modality in MODALITIES:
            log(f"{run}: encoding {len(notes)} notes of {dataset} ({modality})")
            vectors[modality] = bench.note_vectors(run, dataset, notes, modality)
        written.append(shipped_vectors.write(folder, dataset, notes, vectors))
        size = sum((folder / shipped_vectors.vectors_file(dataset, m)).stat().st_size for m in vectors)
        log(f"{run}: vectors written beside {folder.name} ({size / 1e3:.0f} kB)")
    return written


def evaluate_shipped(workspace: Workspace, directory: Path = CHECKPOINTS_DIR, log=print) -> None:
    """Install the shipped (bf16) checkpoints and evaluate exactly those weights, so the eval.json beside
    each one is what a user reproduces after `install_checkpoints`."""
    from core.service import evaluate_variant

    for run in install_checkpoints(workspace, directory):
        folder = next(p for p in directory.iterdir() if (p / RUN_FILE).exists() and read_run_file(p)["run"] == run)
        evaluation = {modality: evaluate_variant(workspace, run, DEMO_DATASET, modality=modality)
                      for modality in ("both", "image", "text")}
        (folder / "eval.json").write_text(json.dumps(evaluation, indent=1))
        log(f"{run}: Recall@10 both {evaluation['both']['recall@10']:.3f}, "
            f"image {evaluation['image']['recall@10']:.3f}, text {evaluation['text']['recall@10']:.3f}")


def _build_command(args) -> int:
    if args.vectors_only:
        for path in write_shipped_vectors(Workspace.open(args.workspace), Path(args.out),
                                          log=lambda m: print(m, file=sys.stderr, flush=True)):
            print(path)
        return 0
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else DEMO_VARIANTS
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise WorkbenchError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    extra = tuple(args.extra.split()) if args.extra else ()
    paths = build_demo_checkpoints(Workspace.open(args.workspace), Path(args.out), args.steps, args.preset, variants,
                                   extra, log=lambda m: print(m, file=sys.stderr, flush=True))
    for path in paths:
        size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
        print(f"{path}\t{size:.1f} MB")
    return 0


def _install_command(args) -> int:
    for run in install_checkpoints(Workspace.open(args.workspace), Path(args.source)):
        print(run)
    return 0


def register(subparsers) -> None:
    from core.cli import add_workspace_argument
    from core.train.presets import PRESETS

    parser = subparsers.add_parser("build-demo", help="train the demo variants on the sample and export them")
    parser.add_argument("--steps", type=int, default=DEMO_STEPS)
    parser.add_argument("--preset", default="cpu", choices=PRESETS)
    parser.add_argument("--variants", default="", help="comma-separated variants (default: "
                        + ",".join(DEMO_VARIANTS) + ")")
    parser.add_argument("--out", default=str(CHECKPOINTS_DIR))
    parser.add_argument("--extra", default="", help="extra train options, e.g. '--lora-rank 8'")
    parser.add_argument("--vectors-only", action="store_true",
                        help="only (re)write the sample's vectors beside the checkpoints already in --out")
    add_workspace_argument(parser)
    parser.set_defaults(func=_build_command)

    parser = subparsers.add_parser("install-demo", help="install shipped checkpoints as runs of a workspace")
    parser.add_argument("--source", default=str(CHECKPOINTS_DIR))
    add_workspace_argument(parser)
    parser.set_defaults(func=_install_command)
