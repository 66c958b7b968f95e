"""`python -m core reproduce`: the paper's ablation on data anyone can get, under one training budget.

Trains every variant (several seeds for `basic` and `micl+late`), evaluates them and the zero-shot
baselines on every split and modality, measures saliency per layer, and writes
- results/ablation.json  variant -> split -> modality -> metric -> {mean, std, seeds: {seed: value}}
- results/saliency.json  variant -> rows of (layer, S_v, S_t, S_o)
- RESULTS.md and results/*.png (table, plots, the claims tested with their numbers, the exact commands).

Runs already finished in the workspace are reused, so an interrupted reproduction resumes where it stopped.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import WorkbenchError
from core.models.note_encoder import VARIANTS
from core.workspace import REPO_ROOT, Workspace

ZERO_SHOT = ("zs-text", "zs-image", "zs-concat", "zs-llm")
SPLITS = ("all", "short_query", "long_query", "short_target", "long_target")
MODALITIES = ("both", "image", "text")
HEADLINE = ("recall@10", "recall@50", "recall@100")


@dataclass
class ReproducePlan:
    dataset: str = "openclipart"
    steps: int = 100
    preset: str = "cpu"
    batch_pairs: int = 16
    main_seeds: tuple[int, ...] = (0, 1, 2)  # for basic and micl+late, whose comparison carries the claims
    other_seeds: tuple[int, ...] = (0,)
    variants: tuple[str, ...] = tuple(VARIANTS)
    zero_shot: tuple[str, ...] = ZERO_SHOT
    saliency_variants: tuple[str, ...] = ("basic", "micl", "micl+late")
    saliency_batches: int = 4
    device: str = "auto"
    results_dir: Path = field(default_factory=lambda: REPO_ROOT / "results")
    report_path: Path = field(default_factory=lambda: REPO_ROOT / "RESULTS.md")

    def seeds_for(self, variant: str) -> tuple[int, ...]:
        return self.main_seeds if variant in ("basic", "micl+late") else self.other_seeds

    def run_name(self, variant: str, seed: int) -> str:
        return f"repro-{self.dataset}-{variant.replace('+', '_')}-{self.preset}-{self.steps}s-seed{seed}"


def _train(workspace: Workspace, plan: ReproducePlan, variant: str, seed: int, log) -> str:
    from core.service import run_info

    run = plan.run_name(variant, seed)
    folder = workspace.run_dir(run)
    if folder.exists():
        info = run_info(workspace, run)
        if info.get("status") == "finished" and info.get("has_weights"):
            log(f"reuse finished run {run}")
            return run
    resume = ["--resume"] if folder.exists() else []
    command = [sys.executable, "-m", "core", "train", "--workspace", str(workspace.root), "--dataset", plan.dataset,
               "--variant", variant, "--steps", str(plan.steps), "--run", run, "--preset", plan.preset,
               "--seed", str(seed), "--batch-pairs", str(plan.batch_pairs), "--device", plan.device, *resume]
    log("$ python " + " ".join(command[1:]))
    finished = subprocess.run(command, cwd=REPO_ROOT)
    if finished.returncode != 0:
        raise WorkbenchError(f"training {run} failed (exit {finished.returncode}); rerun reproduce to resume it")
    return run


def _evaluate(workspace: Workspace, plan: ReproducePlan, name: str) -> dict:
    """split -> modality -> {recall@k..., queries, recall@10_ci95 on "all"} for one encoder on the test split."""
    from core.service import evaluate_variant

    table: dict = {}
    for modality in MODALITIES:
        result = evaluate_variant(workspace, name, plan.dataset, split="test", modality=modality, seed=0)
        subsets = {"all": result, **result.get("subsets", {})}
        for split in SPLITS:
            if split not in subsets:
                continue
            metrics = {k: v for k, v in subsets[split].items() if k.startswith("recall@") and isinstance(v, (int, float))}
            metrics["queries"] = subsets[split].get("queries")
            interval = subsets[split].get("recall@10_ci95")
            if interval:  # bootstrap 95% interval over queries: the yardstick when there is one seed
                metrics["recall@10_ci_low"], metrics["recall@10_ci_high"] = interval
            table.setdefault(split, {})[modality] = metrics
    return table


def _aggregate(per_seed: dict[int, dict]) -> dict:
    """variant table over seeds -> split -> modality -> metric -> {mean, std, seeds}."""
    first = next(iter(per_seed.values()))
    merged = {}
    for split, by_modality in first.items():
        for modality, metrics in by_modality.items():
            for metric in metrics:
                values = {seed: table[split][modality][metric] for seed, table in per_seed.items()}
                numbers = [v for v in values.values() if isinstance(v, (int, float))]
                merged.setdefault(split, {}).setdefault(modality, {})[metric] = {
                    "mean": statistics.fmean(numbers) if numbers else None,
                    "std": statistics.stdev(numbers) if len(numbers) > 1 else 0.0,
                    "seeds": {str(seed): value for seed, value in values.items()},
                }
    return merged


def _saliency(workspace: Workspace, plan: ReproducePlan, variant: str, log) -> list[dict]:
    from core.analysis.saliency import saliency_by_layer
    from core.data.splits import split_dataset
    from core.data.store import Store
    from core.service import load_encoder

    store = Store(workspace)
    split = split_dataset(store, plan.dataset, seed=0)
    pairs = split.test_pairs[: plan.saliency_batches * 4]
    notes = {note.note_id: note for note in store.notes(plan.dataset, sorted({i for p in pairs for i in p}))}
    model = load_encoder(workspace, plan.run_name(variant, plan.main_seeds[0] if variant in ("basic", "micl+late")
                                                  else plan.other_seeds[0]))
    log(f"saliency for {variant} over {len(pairs)} test pairs")
    frame = saliency_by_layer(model, [(notes[a], notes[b]) for a, b in pairs], batch_pairs=4,
                              max_batches=plan.saliency_batches)
    return frame.to_dict(orient="records")


def reproduce(workspace: Workspace, plan: ReproducePlan, log=print) -> dict:
    from core.data.store import Store

    if not Store(workspace).has_dataset(plan.dataset):
        raise WorkbenchError(f"dataset {plan.dataset!r} is not in {workspace.root}; build it first with "
                             f"`python -m core build-openclipart --import-as {plan.dataset}`")
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    passes = _earlier_passes(plan, workspace)
    ablation: dict = {}
    for variant in plan.variants:
        per_seed = {}
        for seed in plan.seeds_for(variant):
            run = _train(workspace, plan, variant, seed, log)
            per_seed[seed] = _evaluate(workspace, plan, run)
        ablation[variant] = _aggregate(per_seed)
        _write_json(plan, ablation, None, started, passes, workspace)
    for name in plan.zero_shot:
        log(f"evaluate {name}")
        ablation[name] = _aggregate({0: _evaluate(workspace, plan, name)})
    saliency_file = plan.results_dir / "saliency.json"
    earlier = json.loads(saliency_file.read_text()) if saliency_file.exists() else {}
    # Saliency is the slowest analysis; a rerun over the same finished runs reuses what it measured.
    saliency = {variant: earlier.get(variant) or _saliency(workspace, plan, variant, log)
                for variant in plan.saliency_variants}
    _write_json(plan, ablation, saliency, started, passes, workspace)
    from core.reproduce_report import training_summary, write_report

    runs = [training_summary(workspace.run_dir(plan.run_name(variant, seed)))
            for variant in plan.variants for seed in plan.seeds_for(variant)]
    write_report(plan, ablation, saliency, passes + [_this_pass(plan, started, workspace)],
                 runs=[r for r in runs if r])
    return ablation


def _plan_meta(plan: ReproducePlan) -> dict:
    def shown(value):
        if not isinstance(value, Path):
            return value
        return str(value.relative_to(REPO_ROOT)) if value.is_relative_to(REPO_ROOT) else str(value)
    return {key: shown(value) for key, value in asdict(plan).items()}


_SAME_TABLE = ("dataset", "steps", "preset", "batch_pairs", "main_seeds", "other_seeds")


def _earlier_passes(plan: ReproducePlan, workspace: Workspace) -> list[dict]:
    """Earlier passes over the same table, so that a rerun that reuses every run still reports how long the
    pass that trained them took. A file from before passes were recorded counts as one pass that ended when
    the file was written."""
    path = plan.results_dir / "ablation.json"
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    mine = json.loads(json.dumps(_plan_meta(plan)))  # tuples as the file has them: lists
    if any(earlier.get("plan", {}).get(key) != mine[key] for key in _SAME_TABLE):
        return []
    if "passes" in earlier:
        return list(earlier["passes"])
    if "elapsed_s" in earlier:
        ended = path.stat().st_mtime
        began = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ended - earlier["elapsed_s"]))
        trained = _runs_created(plan, workspace, began, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ended)))
        return [{"started": began, "elapsed_s": earlier["elapsed_s"], "trained": trained}] if trained else []
    return []


def _runs_created(plan: ReproducePlan, workspace: Workspace, began: str, ended: str | None = None) -> list[str]:
    """The table's runs whose training started in [began, ended]: the runs a pass trained."""
    created_runs = []
    for variant in plan.variants:
        for seed in plan.seeds_for(variant):
            run = plan.run_name(variant, seed)
            try:
                created = json.loads((workspace.run_dir(run) / "run.json").read_text()).get("created_at", "")
            except (OSError, json.JSONDecodeError):
                continue
            # Local ISO times (as the trainer writes them): string order is time order.
            if created >= began and (ended is None or created <= ended):
                created_runs.append(run)
    return created_runs


def _this_pass(plan: ReproducePlan, started: float, workspace: Workspace) -> dict:
    began = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))
    return {"started": began, "elapsed_s": round(time.time() - started),
            "trained": _runs_created(plan, workspace, began)}


def _write_json(plan: ReproducePlan, ablation: dict, saliency: dict | None, started: float,
                passes: list[dict], workspace: Workspace) -> None:
    this = _this_pass(plan, started, workspace)
    # A pass that trained nothing says nothing about the table's cost: only the report mentions it.
    kept = passes + [this] if this["trained"] else passes
    (plan.results_dir / "ablation.json").write_text(json.dumps(
        {"plan": _plan_meta(plan), "elapsed_s": this["elapsed_s"], "passes": kept, "results": ablation}, indent=1))
    if saliency is not None:
        (plan.results_dir / "saliency.json").write_text(json.dumps(saliency, indent=1))


def _command(args) -> int:
    plan = ReproducePlan(dataset=args.dataset, steps=args.steps, preset=args.preset, batch_pairs=args.batch_pairs,
                         main_seeds=tuple(range(args.main_seeds)), other_seeds=(0,), device=args.device,
                         saliency_batches=args.saliency_batches)
    if args.variants:
        plan.variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        unknown = [v for v in plan.variants if v not in VARIANTS]
        if unknown:
            raise WorkbenchError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.results_dir:
        plan.results_dir = Path(args.results_dir)
        plan.report_path = plan.results_dir / "RESULTS.md"
    reproduce(Workspace.open(args.workspace), plan, log=lambda message: print(message, file=sys.stderr, flush=True))
    print(plan.report_path)
    return 0


def register(subparsers) -> None:
    from core.cli import add_workspace_argument

    parser = subparsers.add_parser("reproduce", help="train and evaluate every variant; write RESULTS.md")
    parser.add_argument("--dataset", default="openclipart")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "reference"])
    parser.add_argument("--batch-pairs", type=int, default=16)
    parser.add_argument("--main-seeds", type=int, default=3, help="seeds for basic and micl+late")
    parser.add_argument("--variants", default="", help="comma-separated subset of variants")
    parser.add_argument("--saliency-batches", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results-dir", default="", help="where to write results (default results/ and RESULTS.md)")
    add_workspace_argument(parser)
    parser.set_defaults(func=_command)
