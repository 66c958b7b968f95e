"""`python -m core reproduce`: the paper's ablation on data anyone can get, under one training budget.

Trains every variant (several seeds for `basic` and `micl+late`), evaluates them and the zero-shot
baselines on every split and modality (pool with distractors, chance levels, category hit rate), measures
saliency per layer (S_v over the image span, S_visual over the visual tokens alone, S_slot over the mICL
slot and its instruction), checks the headroom of a tuned fusion of frozen parts, and writes
- results/ablation.json   {"plan", "passes", "results": variant -> split -> modality -> metric ->
                          {mean, std, seeds: {seed: value}}, "image_path": variant -> health figures,
                          "headroom": how the text + zs-image weights were tuned}
- results/per_query.json  the query ids of each split and, per variant, modality and seed, each query's
                          target rank and best same-category rank: the input of the paired tests
- results/saliency.json   variant -> rows of (layer, S_v, S_t, S_o, S_visual, S_slot, n_batches)
- results/runs/<run>.json one finished run's evaluation, per-query ranks and training summary
                          (core.reproduce_records): what a later sitting reuses when its workspace lost the run
- results/REPRODUCTION.md and results/*.png (tables, plots, each claim judged by a paired test, the exact
                          commands); never the repository's hand-written RESULTS.md.
With --weak-text the same is done on a copy of the dataset whose notes keep their title only (topics and
content dropped, images and pairs unchanged), for `text`, `basic`, `micl+late` and the baselines, under
results/weak-text/; RESULTS.md then shows both conditions side by side.

The workspace lives outside the work tree by default (the user's cache folder) and may be laid anew: a
missing dataset is built again (sample, openclipart). Finished runs, evaluations (the service's cache),
saliency and image-path figures are reused, so an interrupted reproduction resumes where it stopped; a run
whose folder is gone is taken from its record when the rebuilt dataset gives the same held-out notes and
pairs (the record's evaluation digest), and trained again otherwise.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import WorkbenchError
from core.models.note_encoder import VARIANTS
from core.runs import RunStore
from core.workspace import REPO_ROOT, Workspace

ZERO_SHOT = ("zs-text", "zs-image", "zs-concat", "zs-llm")
SPLITS = ("all", "short_query", "long_query", "short_target", "long_target")
MODALITIES = ("both", "image", "text")
HEADLINE = ("recall@10", "recall@50", "recall@100")
WEAK_TEXT_SUFFIX = "-weak-text"
WEAK_TEXT_VARIANTS = ("text", "basic", "micl+late")
HEADROOM = "text+zs-image"  # the trained text model's vectors fused with the frozen image tower's, tuned
IMAGE_PATH_VARIANTS = ("basic", "micl", "basic+late", "micl+late")  # the image is in the prompt
LATE_FUSION_ONLY = ("late",)  # the image reaches the vector through the gate alone


def default_workspace(dataset: str) -> Path:
    """Outside the work tree: a reproduction's runs and caches are large and may be laid anew at any time."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "notellm2-workbench" / f"reproduce-{dataset}"


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
    saliency_batches: int = 50  # published figures average at least 50 batches
    device: str = "auto"
    weak_text: bool = False
    headroom: bool = True
    results_dir: Path = field(default_factory=lambda: REPO_ROOT / "results")
    # Beside its figures, never over the repository's hand-written RESULTS.md (which summarises every table).
    report_path: Path = field(default_factory=lambda: REPO_ROOT / "results" / "REPRODUCTION.md")

    @property
    def train_dataset(self) -> str:
        """The dataset the runs train and are evaluated on: the weak-text copy under --weak-text."""
        return self.dataset + WEAK_TEXT_SUFFIX if self.weak_text else self.dataset

    @property
    def condition_dir(self) -> Path:
        """Where this condition's machine-readable results go (plots and RESULTS.md stay in results_dir)."""
        return self.results_dir / "weak-text" if self.weak_text else self.results_dir

    def seeds_for(self, variant: str) -> tuple[int, ...]:
        return self.main_seeds if variant in ("basic", "micl+late") else self.other_seeds

    def run_name(self, variant: str, seed: int) -> str:
        return f"repro-{self.train_dataset}-{variant.replace('+', '_')}-{self.preset}-{self.steps}s-seed{seed}"


def _train(workspace: Workspace, plan: ReproducePlan, variant: str, seed: int, log) -> str:
    run = plan.run_name(variant, seed)
    if _has_finished_run(workspace, plan, variant, seed):
        log(f"reuse finished run {run}")
        return run
    resume = ["--resume"] if workspace.run_dir(run).exists() else []
    command = [sys.executable, "-m", "core", "train", "--workspace", str(workspace.root), "--dataset", plan.train_dataset,
               "--variant", variant, "--steps", str(plan.steps), "--run", run, "--preset", plan.preset,
               "--seed", str(seed), "--batch-pairs", str(plan.batch_pairs), "--device", plan.device, *resume]
    log("$ python " + " ".join(command[1:]))
    finished = subprocess.run(command, cwd=REPO_ROOT)
    if finished.returncode != 0:
        raise WorkbenchError(f"training {run} failed (exit {finished.returncode}); rerun reproduce to resume it")
    return run


def _has_finished_run(workspace: Workspace, plan: ReproducePlan, variant: str, seed: int | None = None) -> bool:
    """Whether this workspace holds the run finished, with weights (an earlier sitting's may be gone)."""
    from core.service import run_info

    run = plan.run_name(variant, _first_seed(plan, variant) if seed is None else seed)
    if not workspace.run_dir(run).exists():
        return False
    try:
        info = run_info(workspace, run)
    except WorkbenchError:
        return False
    return info.get("status") == "finished" and bool(info.get("has_weights"))


def _evaluation_digest(workspace: Workspace, plan: ReproducePlan) -> str:
    from core.data.store import Store
    from core.reproduce_records import evaluation_digest
    from core.service import split_for

    return evaluation_digest(Store(workspace), plan.train_dataset, split_for(workspace, "zs-text", plan.train_dataset))


def _finished_run(workspace: Workspace, plan: ReproducePlan, variant: str, seed: int, digest: str, log) -> tuple[dict, dict]:
    """(table, per-query ranks) of one run of the table: evaluated here when this workspace has it finished
    (and recorded with the results), else taken from its record when an earlier sitting finished it, else
    trained (or resumed) and evaluated."""
    from core.reproduce_records import read_record, record_ranks, write_record
    from core.reproduce_report import training_summary

    run = plan.run_name(variant, seed)
    if not _has_finished_run(workspace, plan, variant, seed):
        record, why_not = read_record(plan, run, digest)
        if record is not None:
            log(f"reuse the recorded results of {run} (finished {record['recorded']}; not in this workspace)")
            return record["table"], record_ranks(record)
        if why_not != "no record":
            log(f"{run}: {why_not}; training it again")
    _train(workspace, plan, variant, seed, log)
    table, ranks = _evaluate(workspace, plan, run)
    write_record(plan, run, variant, seed, table, ranks, training_summary(workspace.run_dir(run)), digest)
    return table, ranks


def _earlier_headroom(folder: Path, earlier: dict) -> tuple[dict, dict, dict] | None:
    """The headroom check as an earlier pass measured it (table, per-query entry, meta), or None."""
    from core.claims import HEADROOM as NAME

    per_query = _load_json(folder / "per_query.json")
    try:
        table = {split: by_modality["both"] for split, by_modality in earlier["results"][NAME].items()}
        entry = dict(per_query["results"][NAME]["both"]["0"])
        meta = earlier["headroom"]
    except (KeyError, TypeError):
        return None
    table = {split: {"both": {metric: value["mean"] for metric, value in metrics.items()}}
             for split, metrics in table.items()}
    entry["query_subsets"] = per_query.get("queries", {})
    return table, {"both": entry}, meta


def _table_from_result(result: dict) -> dict:
    """split -> metrics of one evaluation: recall@k, category_hit@k, queries, pool, chance levels, and the
    bootstrap interval of Recall@10 on "all"."""
    table: dict = {}
    subsets = {"all": result, **result.get("subsets", {})}
    for split in SPLITS:
        if split not in subsets:
            continue
        metrics = {k: v for k, v in subsets[split].items()
                   if k.startswith(("recall@", "category_hit@")) and isinstance(v, (int, float))}
        metrics["queries"] = subsets[split].get("queries")
        for key in ("pool", "distractors"):
            if key in result:
                metrics[key] = result[key]
        for key, value in result.get("chance", {}).items():
            metrics[f"chance_{key}"] = value
        interval = subsets[split].get("recall@10_ci95")
        if interval:
            metrics["recall@10_ci_low"], metrics["recall@10_ci_high"] = interval
        table[split] = metrics
    return table


def _evaluate(workspace: Workspace, plan: ReproducePlan, name: str) -> tuple[dict, dict]:
    """(split -> modality -> metrics, modality -> per-query ranks) for one encoder on the test split."""
    from core.service import evaluate_variant

    table: dict = {}
    per_query: dict = {}
    for modality in MODALITIES:
        result = evaluate_variant(workspace, name, plan.train_dataset, split="test", modality=modality, seed=0)
        for split, metrics in _table_from_result(result).items():
            table.setdefault(split, {})[modality] = metrics
        per_query[modality] = _per_query_entry(result)
    return table, per_query


def _per_query_entry(result: dict) -> dict:
    entry = {"rank": result.get("per_query", {}).get("rank", {})}
    if "category_rank" in result.get("per_query", {}):
        entry["category_rank"] = result["per_query"]["category_rank"]
    entry["query_subsets"] = result.get("query_subsets", {})
    return entry


def _aggregate(per_seed: dict[int, dict]) -> dict:
    """variant table over seeds -> split -> modality -> metric -> {mean, std, seeds}."""
    first = next(iter(per_seed.values()))
    merged = {}
    for split, by_modality in first.items():
        for modality, metrics in by_modality.items():
            for metric in metrics:
                values = {seed: table[split][modality].get(metric) for seed, table in per_seed.items()}
                numbers = [v for v in values.values() if isinstance(v, (int, float))]
                merged.setdefault(split, {}).setdefault(modality, {})[metric] = {
                    "mean": statistics.fmean(numbers) if numbers else None,
                    "std": statistics.stdev(numbers) if len(numbers) > 1 else 0.0,
                    "seeds": {str(seed): value for seed, value in values.items()},
                }
    return merged


def _split_per_query(per_query: dict) -> dict:
    """{"queries": split -> query ids, "results": variant -> modality -> seed -> ranks}: the subsets are the
    same for every variant evaluated on one split, so they are stored once (the paired tests refuse
    variants whose query sets differ anyway)."""
    queries: dict = {}
    results: dict = {}
    for variant, by_modality in per_query.items():
        for modality, by_seed in by_modality.items():
            for seed, entry in by_seed.items():
                entry = dict(entry)
                subsets = entry.pop("query_subsets", {})
                for split, ids in subsets.items():
                    queries.setdefault(split, ids)
                results.setdefault(variant, {}).setdefault(modality, {})[str(seed)] = entry
    return {"queries": queries, "results": results}


def _first_seed(plan: ReproducePlan, variant: str) -> int:
    return plan.seeds_for(variant)[0]


def _saliency(workspace: Workspace, plan: ReproducePlan, variant: str, log) -> list[dict]:
    from core.analysis.saliency import saliency_by_layer
    from core.data.store import Store
    from core.service import load_encoder, split_for

    run = plan.run_name(variant, _first_seed(plan, variant))
    store = Store(workspace)
    split = split_for(workspace, run, plan.train_dataset)
    batch_pairs = 4
    pairs = split.test_pairs[: plan.saliency_batches * batch_pairs]
    notes = {note.note_id: note for note in store.notes(plan.train_dataset, sorted({i for p in pairs for i in p}))}
    model = load_encoder(workspace, run)
    log(f"saliency for {variant} over {len(pairs)} test pairs ({plan.saliency_batches} batches asked)")
    frame = saliency_by_layer(model, [(notes[a], notes[b]) for a, b in pairs], batch_pairs=batch_pairs,
                              max_batches=plan.saliency_batches)
    rows = frame.to_dict(orient="records")
    for row in rows:
        row["batches_asked"] = plan.saliency_batches
    used = pairs[: int(frame["n_batches"].iloc[0]) * batch_pairs]
    return rows, batch_ratios(frame.attrs["per_batch"], frame.attrs["measures"], used)


def batch_ratios(per_batch, measures, pairs) -> dict:
    """Per batch, the layer-averaged S_v / S_t, S_visual / S_t and S_slot / S_t (None where not measured),
    and a digest of the pairs the batches were made of: two variants' batches pair up only over the same
    pairs."""
    import hashlib
    import warnings

    import numpy as np

    values = np.array(per_batch, dtype=float)  # batches x layers x measures
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no slot in `basic`) stay NaN
        means = np.nanmean(values, axis=1)  # batches x measures
        column = {name: i for i, name in enumerate(measures)}
        ratios = {name: means[:, column[name]] / means[:, column["S_t"]] for name in ("S_v", "S_visual", "S_slot")}
    out = {"pairs_digest": hashlib.sha1(json.dumps([list(p) for p in pairs]).encode()).hexdigest()[:16]}
    for name, ratio in ratios.items():
        out[f"{name}/S_t"] = [float(r) if np.isfinite(r) else None for r in ratio]
    return out


def _saliency_reusable(rows) -> bool:
    return bool(rows) and "S_visual" in rows[0] and "batches_asked" in rows[0]


def _image_path(workspace: Workspace, plan: ReproducePlan, variant: str, log) -> dict:
    """Image-path health of one run (core.analysis.image_path) on the held-out notes and pairs of its split."""
    from core.analysis.image_path import image_path_health
    from core.data.store import Store
    from core.service import load_encoder, split_for

    run = plan.run_name(variant, _first_seed(plan, variant))
    split = split_for(workspace, run, plan.train_dataset)
    notes = Store(workspace).notes(plan.train_dataset, split.test_note_ids)
    log(f"image-path health of {run}")
    figures = dict(image_path_health(load_encoder(workspace, run), notes, split.test_pairs, seed=0))
    figures.update(_gate_read_out(workspace, run, notes))
    # The visual loss is a training figure: the run's last evaluation event carries it with its chance level.
    for key, value in _last_training_health(workspace.run_dir(run)).items():
        figures.setdefault(key, value)
    return figures


def _gate_read_out(workspace: Workspace, run: str, notes) -> dict:
    """For a late-fusion run, the gate's mean LLM share z over the held-out notes that have a picture (for n_m,
    and for n_v under mICL): 0.5 is where the gate starts, so a share near it after training says the final
    vector is still half the raw image feature. Empty for runs without late fusion."""
    import math

    from core.analysis.gate import gate_shares
    from core.service import load_encoder

    model = load_encoder(workspace, run)
    if getattr(model, "fusion", None) is None:
        return {}
    frame = gate_shares(model, notes)
    pictured = frame[frame.has_image]
    figures = {"gate_llm_share": float(pictured.llm_share.mean())}
    visual = float(pictured.llm_share_visual.mean())
    if not math.isnan(visual):
        figures["gate_llm_share_visual"] = visual
    return figures


def _last_training_health(run_folder: Path) -> dict:
    """visual_loss and chance_loss from the last evaluation event of a run's events.jsonl that has them."""
    found: dict = {}
    try:
        lines = (run_folder / "events.jsonl").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            health = json.loads(line).get("image_path") or {}
        except (json.JSONDecodeError, AttributeError):
            continue
        picked = {key: health[key] for key in ("visual_loss", "chance_loss") if health.get(key) is not None}
        if picked:
            found = picked
    return found


HEADROOM_GRID = tuple(round(0.05 * i, 2) for i in range(21))


def _headroom(workspace: Workspace, plan: ReproducePlan, log) -> tuple[dict, dict, dict] | None:
    """What a tuned fusion of frozen-in-place parts gets on this data: the trained `text` run's vectors
    concatenated with `zs-image`'s, weighted sqrt(w) : sqrt(1 - w) (scores w * text + (1 - w) * image).

    The weight is tuned on held-out queries without touching the queries it is judged on (2-fold
    cross-fitting: the queries are split in two alternating halves, each half is scored with the weight that
    maximises Recall@10 on the other half), so every query keeps its own figure for the paired test against
    `micl+late`. Returns (table, per-query entry, {"weights", "grid", ...}) or None without a `text` run."""
    import numpy as np

    from core.data.store import Store
    from core.evaluate import evaluate_vectors
    from core.service import note_vectors, split_for

    if "text" not in plan.variants:
        return None
    run = plan.run_name("text", _first_seed(plan, "text"))
    dataset = plan.train_dataset
    split = split_for(workspace, run, dataset)
    notes = Store(workspace).notes(dataset, split.test_note_ids)
    ids = [n.note_id for n in notes]
    categories = {n.note_id: n.category for n in notes}
    log(f"headroom: {run} + zs-image, weight tuned by cross-fitting")
    text = note_vectors(workspace, run, dataset, notes, "both")
    image = note_vectors(workspace, "zs-image", dataset, notes, "both")
    results = {}
    for weight in HEADROOM_GRID:
        fused = np.concatenate([np.sqrt(weight) * text, np.sqrt(1 - weight) * image], axis=1)
        results[weight] = evaluate_vectors((ids, fused), split.test_pairs, split.subsets(), ids, seed=0,
                                           categories=categories)
    reference = results[HEADROOM_GRID[0]]
    merged, weights, folds = cross_fitted(results)
    merged["query_subsets"] = reference.get("query_subsets", {})
    table = {}
    for split_name, members in merged["query_subsets"].items():
        ranks = [merged["rank"][q] for q in members]
        metrics = {"queries": len(ranks), "pool": reference["pool"], "distractors": reference.get("distractors")}
        for k in (10, 50, 100):
            metrics[f"recall@{k}"] = float(np.mean([r < k for r in ranks])) if ranks else None
            counted = [merged["category_rank"][q] for q in members if q in merged["category_rank"]]
            if counted:
                metrics[f"category_hit@{k}"] = float(np.mean([r is not None and r < k for r in counted]))
        for key, value in reference.get("chance", {}).items():
            metrics[f"chance_{key}"] = value
        table[split_name] = {"both": metrics}
    # The grid's ends are the parts alone: w = 1 is the text run, w = 0 zs-image.
    meta = {"run": run, "weights_by_fold": weights, "grid": list(HEADROOM_GRID), "folds": [len(f) for f in folds],
            "text_part_r10": results[1.0]["recall@10"], "image_part_r10": reference["recall@10"]}
    return table, {"both": merged}, meta


def cross_fitted(results: dict[float, dict], k: int = 10) -> tuple[dict, list[float], list[list[str]]]:
    """Per-query ranks where each query is scored under a weight chosen without it: the queries (in the
    evaluation's order) fall into two alternating halves; each half takes the weight whose Recall@k is best on
    the other half (ties: the weight nearest an even mix). `results`: weight -> evaluation result.
    Returns ({"rank", "category_rank"}, [weight of half 0, weight of half 1], the two halves)."""
    import numpy as np

    grid = sorted(results)
    queries = list(results[grid[0]]["per_query"]["rank"])
    folds = [queries[0::2], queries[1::2]]
    weights = []
    merged: dict = {"rank": {}, "category_rank": {}}
    for fold, judged in enumerate(folds):
        tuning = folds[1 - fold]
        recall = {w: float(np.mean([results[w]["per_query"]["rank"][q] < k for q in tuning])) if tuning else 0.0
                  for w in grid}
        best = max(grid, key=lambda w: (recall[w], -abs(w - 0.5)))
        weights.append(best)
        for q in judged:
            merged["rank"][q] = results[best]["per_query"]["rank"][q]
            if q in results[best]["per_query"].get("category_rank", {}):
                merged["category_rank"][q] = results[best]["per_query"]["category_rank"][q]
    return merged, weights, folds


def _ensure_dataset(workspace: Workspace, plan: ReproducePlan, log) -> None:
    """Lay the dataset (and its weak-text copy) anew in a fresh workspace where the workbench can."""
    from core.data.store import Store

    store = Store(workspace)
    if not store.has_dataset(plan.dataset):
        if plan.dataset == "sample":
            from core.data.sample import ensure_sample_dataset

            ensure_sample_dataset(workspace)
        elif plan.dataset == "openclipart":
            command = [sys.executable, "-m", "core", "build-openclipart", "--import-as", plan.dataset,
                       "--workspace", str(workspace.root)]
            log("$ python " + " ".join(command[1:]))
            if subprocess.run(command, cwd=REPO_ROOT).returncode != 0:
                raise WorkbenchError("building openclipart failed (are the apt packages openclipart-png and "
                                     "openclipart-svg installed?)")
        else:
            raise WorkbenchError(f"dataset {plan.dataset!r} is not in {workspace.root}; import it there first")
    if plan.weak_text:
        weak_text_dataset(store, plan.dataset)


def weak_text_dataset(store, dataset: str) -> str:
    """A copy of `dataset` whose notes keep only their title (topics and content dropped), with the same
    note ids, order, categories, pairs and image pixels, so that its split is the dataset's split.

    It goes through the ordinary import (atomic, checked). Each stored image is handed over as a lossless
    PNG of its decoded pixels: the import keeps lossless sources lossless, so the vision tower sees the same
    pixels in both conditions (re-importing a stored JPEG would compress it a second time).

    A note with no title (its text all in the content) would be left with no text at all, which the import
    refuses and which would change the split; it keeps the first words of its content instead, as many as
    the dataset's median title has, so that it carries no more text than a typical title."""
    import csv
    import statistics
    import tempfile

    from core.data.images import load_image

    name = dataset + WEAK_TEXT_SUFFIX
    if store.has_dataset(name):
        return name
    notes = store.notes(dataset)
    titled = [len(n.title.split()) for n in notes if n.title.strip()]
    title_words = max(1, round(statistics.median(titled))) if titled else 1
    with tempfile.TemporaryDirectory(dir=store.workspace.root) as scratch:
        folder = Path(scratch)
        (folder / "images").mkdir()
        with open(folder / "notes.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["note_id", "title", "content", "image", "topics", "category"])
            for index, note in enumerate(notes):
                image = ""
                if note.image:
                    image = f"{index}.png"
                    load_image(note.image).save(folder / "images" / image, format="PNG")
                title = note.title if note.title.strip() else " ".join(note.content.split()[:title_words])
                writer.writerow([note.note_id, title, "", image, "", note.category])
        with open(folder / "pairs.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["note_id_1", "note_id_2"])
            writer.writerows(store.pairs(dataset))
        store.import_dataset(name, folder / "notes.csv", folder / "pairs.csv", folder / "images",
                             source=f"{dataset}, title only (weak-text condition)")
    return name


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def reproduce(workspace: Workspace, plan: ReproducePlan, log=print) -> dict:
    _ensure_dataset(workspace, plan, log)
    folder = plan.condition_dir
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    passes = _earlier_passes(plan, workspace)
    digest = _evaluation_digest(workspace, plan)
    earlier = _load_json(folder / "ablation.json")
    if earlier and earlier.get("evaluation_digest") != digest:
        # Figures measured on other held-out notes (a dataset built differently) are not this table's.
        log("earlier results were evaluated on other held-out notes; measuring image paths, saliency and the "
            "headroom again")
        earlier = {}
    ablation: dict = {}
    per_query: dict = {}
    extras: dict = {"image_path": dict(earlier.get("image_path") or {}), "evaluation_digest": digest}
    for variant in plan.variants:
        per_seed = {}
        for seed in plan.seeds_for(variant):
            per_seed[seed], ranks = _finished_run(workspace, plan, variant, seed, digest, log)
            for modality, entry in ranks.items():
                per_query.setdefault(variant, {}).setdefault(modality, {})[seed] = entry
        ablation[variant] = _aggregate(per_seed)
        _write_json(plan, ablation, None, started, passes, workspace, extras)
    for name in plan.zero_shot:
        log(f"evaluate {name}")
        table, ranks = _evaluate(workspace, plan, name)
        ablation[name] = _aggregate({0: table})
        per_query[name] = {modality: {0: entry} for modality, entry in ranks.items()}
    if plan.headroom and "zs-image" in plan.zero_shot:
        if _has_finished_run(workspace, plan, "text"):
            found = _headroom(workspace, plan, log)
        else:
            found = _earlier_headroom(folder, earlier)
            log("headroom: reused from the earlier pass (the text run is not in this workspace)" if found
                else "headroom: not measured (no text run in this workspace and none measured before)")
        if found is not None:
            table, ranks, extras["headroom"] = found
            ablation[HEADROOM] = _aggregate({0: table})
            per_query[HEADROOM] = {modality: {0: entry} for modality, entry in ranks.items()}
    for variant in IMAGE_PATH_VARIANTS:
        if variant in plan.variants and not extras["image_path"].get(variant):
            if not _has_finished_run(workspace, plan, variant):
                log(f"image-path health of {variant}: not measured (its run is not in this workspace)")
                continue
            figures = _image_path(workspace, plan, variant, log)
            if figures:
                extras["image_path"][variant] = figures
    # Late fusion without the image in the prompt has no connector to check, but its gate is still the read-out
    # of how much of the vector is the raw image feature.
    for variant in LATE_FUSION_ONLY:
        if variant in plan.variants and not extras["image_path"].get(variant) and _has_finished_run(workspace, plan, variant):
            from core.data.store import Store
            from core.service import split_for

            run = plan.run_name(variant, _first_seed(plan, variant))
            notes = Store(workspace).notes(plan.train_dataset, split_for(workspace, run, plan.train_dataset).test_note_ids)
            log(f"late-fusion gate of {run}")
            extras["image_path"][variant] = _gate_read_out(workspace, run, notes)
    if not extras["image_path"]:
        extras.pop("image_path")
    earlier_saliency = _load_json(folder / "saliency.json") if earlier else {}
    earlier_batches = _load_json(folder / "saliency_batches.json") if earlier else {}
    # Saliency is the slowest analysis; a rerun over the same finished runs reuses what it measured.
    saliency, saliency_batches = {}, {}
    for variant in plan.saliency_variants:
        if variant not in plan.variants:
            continue
        rows = earlier_saliency.get(variant)
        reuse = (_saliency_reusable(rows) and rows[0]["batches_asked"] == plan.saliency_batches
                 and variant in earlier_batches)
        if reuse:
            saliency[variant], saliency_batches[variant] = rows, earlier_batches[variant]
        elif not _has_finished_run(workspace, plan, variant):
            log(f"saliency for {variant}: not measured (its run is not in this workspace)")
        else:
            saliency[variant], saliency_batches[variant] = _saliency(workspace, plan, variant, log)
    (folder / "saliency_batches.json").write_text(json.dumps(saliency_batches, indent=1))
    per_query_file = _split_per_query(per_query)
    (folder / "per_query.json").write_text(json.dumps(per_query_file))
    _write_json(plan, ablation, saliency, started, passes, workspace, extras)
    _report(workspace, plan, passes + [_this_pass(plan, started, workspace)])
    return ablation


def _condition(plan: ReproducePlan, workspace: Workspace, passes: list[dict] | None = None) -> dict | None:
    """One condition's results as the report reads them, from its files; None when it has not run."""
    ablation_file = _load_json(plan.condition_dir / "ablation.json")
    if not ablation_file.get("results"):
        return None
    runs = [_training_of(workspace, plan, plan.run_name(variant, seed))
            for variant in plan.variants for seed in plan.seeds_for(variant)]
    return {"dataset": plan.train_dataset, "ablation": ablation_file["results"],
            "per_query": _load_json(plan.condition_dir / "per_query.json"),
            "saliency": _load_json(plan.condition_dir / "saliency.json") or None,
            "saliency_batches": _load_json(plan.condition_dir / "saliency_batches.json") or None,
            "image_path": ablation_file.get("image_path"), "headroom": ablation_file.get("headroom"),
            "passes": passes if passes is not None else ablation_file.get("passes", []),
            "runs": [r for r in runs if r], "plan": ablation_file.get("plan", {})}


def _training_of(workspace: Workspace, plan: ReproducePlan, run: str) -> dict | None:
    """A run's training summary from its folder, or from its record when an earlier sitting trained it."""
    from core.reproduce_records import record_path
    from core.reproduce_report import training_summary

    summary = training_summary(workspace.run_dir(run))
    if summary is None:
        summary = _load_json(record_path(plan, run)).get("training")
    return summary


def _report(workspace: Workspace, plan: ReproducePlan, passes: list[dict]) -> None:
    """RESULTS.md from both conditions' files: the full-text one as the main table, the weak-text one beside
    it when it has run (or alone, labelled, while only it has)."""
    from dataclasses import replace

    from core.reproduce_report import write_report

    full_plan = replace(plan, weak_text=False) if plan.weak_text else plan
    weak_plan = plan if plan.weak_text else replace(plan, weak_text=True, variants=WEAK_TEXT_VARIANTS)
    full = _condition(full_plan, workspace, None if plan.weak_text else passes)
    weak = _condition(weak_plan, workspace, passes if plan.weak_text else None)
    main = full or weak
    if main is None:
        return
    write_report(full_plan if full else weak_plan, main, weak=weak if full else None)


def _plan_meta(plan: ReproducePlan) -> dict:
    def shown(value):
        if not isinstance(value, Path):
            return value
        return str(value.relative_to(REPO_ROOT)) if value.is_relative_to(REPO_ROOT) else str(value)
    return {key: shown(value) for key, value in asdict(plan).items()}


# What makes two passes parts of one table: the budget every run trains for. Not the variants or the seed
# counts: a table is filled over several sittings (one variant, then the others, then more seeds), and the
# pass that trained a run stays the one that reports its wall time.
_SAME_TABLE = ("dataset", "steps", "preset", "batch_pairs")


def _earlier_passes(plan: ReproducePlan, workspace: Workspace) -> list[dict]:
    """Earlier passes over the same table, so that a rerun that reuses every run still reports how long the
    pass that trained them took. A file from before passes were recorded counts as one pass that ended when
    the file was written."""
    path = plan.condition_dir / "ablation.json"
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
    created_runs, runs = [], RunStore(workspace)
    for variant in plan.variants:
        for seed in plan.seeds_for(variant):
            run = plan.run_name(variant, seed)
            if not runs.exists(run):
                continue
            try:
                created = runs.get(run).created_at
            except WorkbenchError:  # a run.json being written, or torn: not a run this pass finished
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
                passes: list[dict], workspace: Workspace, extras: dict | None = None) -> None:
    """ablation.json (and saliency.json); `extras` adds top-level keys: "image_path" (variant -> the
    image-path health figures: connector_probe_r10, nv_r10, zs_image_r10, connector_variation,
    visual_loss, chance_loss) and "headroom"."""
    this = _this_pass(plan, started, workspace)
    # A pass that trained nothing says nothing about the table's cost: only the report mentions it.
    kept = passes + [this] if this["trained"] else passes
    folder = plan.condition_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ablation.json").write_text(json.dumps(
        {"plan": _plan_meta(plan), "elapsed_s": this["elapsed_s"], "passes": kept, "results": ablation,
         **{key: value for key, value in (extras or {}).items() if value}}, indent=1))
    if saliency is not None:
        (folder / "saliency.json").write_text(json.dumps(saliency, indent=1))


def _command(args) -> int:
    plan = ReproducePlan(dataset=args.dataset, steps=args.steps, preset=args.preset, batch_pairs=args.batch_pairs,
                         main_seeds=tuple(range(args.main_seeds)), other_seeds=(0,), device=args.device,
                         saliency_batches=args.saliency_batches, weak_text=args.weak_text,
                         headroom=not args.no_headroom)
    if args.weak_text:
        plan.variants = WEAK_TEXT_VARIANTS
        plan.saliency_variants = ("basic", "micl+late")
    if args.variants:
        plan.variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        unknown = [v for v in plan.variants if v not in VARIANTS]
        if unknown:
            raise WorkbenchError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.results_dir and Path(args.results_dir).resolve() != plan.results_dir.resolve():
        plan.results_dir = Path(args.results_dir)
        plan.report_path = plan.results_dir / "RESULTS.md"
    root = args.workspace or os.environ.get("NOTELLM2_WORKSPACE") or default_workspace(args.dataset)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    log(f"workspace: {root}")
    reproduce(Workspace.open(root), plan, log=log)
    print(plan.report_path)
    return 0


def register(subparsers) -> None:
    from core.cli import add_workspace_argument
    from core.train.presets import PRESETS

    parser = subparsers.add_parser("reproduce", help="train and evaluate every variant; write RESULTS.md")
    parser.add_argument("--dataset", default="openclipart")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--preset", default="cpu", choices=PRESETS)
    parser.add_argument("--batch-pairs", type=int, default=16)
    parser.add_argument("--main-seeds", type=int, default=3, help="seeds for basic and micl+late")
    parser.add_argument("--variants", default="", help="comma-separated subset of variants")
    parser.add_argument("--saliency-batches", type=int, default=50, help="batches of 4 test pairs averaged")
    parser.add_argument("--weak-text", action="store_true",
                        help="the weak-text condition: notes cut to their title; text, basic, micl+late and the "
                             "baselines; results under RESULTS_DIR/weak-text, shown beside the full-text table")
    parser.add_argument("--no-headroom", action="store_true",
                        help="skip the tuned text + zs-image fusion (the headroom check)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results-dir", default="", help="where to write results (default results/, with the report as "
                        "results/REPRODUCTION.md; another folder gets FOLDER/RESULTS.md)")
    add_workspace_argument(parser)
    parser.set_defaults(func=_command)
    for action in parser._actions:  # the reproduction's own default: outside the work tree
        if action.dest == "workspace":
            action.help = "workspace folder (default: ~/.cache/notellm2-workbench/reproduce-DATASET)"
