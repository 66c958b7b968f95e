"""RESULTS.md and its plots from the reproduction's numbers. The claims are stated in advance and judged by
paired tests over the same queries (core.stats), whichever way they come out:

- every comparison is made on all queries and on each short/long split separately; per-query Recall@10 hits
  of a variant with several seeds are averaged over its seeds before pairing;
- the p-value is an exact McNemar test (one seed on each side) or a sign-flip permutation test (seed
  averages), Holm-adjusted over every comparison of the condition, and the report says how many there were;
- a difference is called one only when its adjusted p is below 0.05; otherwise "no difference shown".
"""
from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path

from core.claims import (ALPHA, COMPARISONS, HEADROOM, MAIN_K, SALIENCY_COMPARISONS,  # noqa: F401 (re-exported)
                         SALIENCY_MEASURES, SPLITS, holm_verdicts, paired_comparisons, saliency_comparisons,
                         seed_hits)

MAIN_METRIC = "recall@10"
SPLIT_NAMES = {"all": "all", "short_query": "short query", "long_query": "long query",
               "short_target": "short target", "long_target": "long target"}
TRAINED = ("text", "basic", "micl", "late", "basic+late", "micl+late")
IMAGE_PATH_KEYS = ("connector_probe_r10", "nv_r10", "nv_state_r10", "zs_image_r10", "connector_variation",
                   "visual_loss", "chance_loss", "gate_llm_share", "gate_llm_share_visual")


def _cell(ablation, variant, split="all", modality="both", metric=MAIN_METRIC):
    try:
        entry = ablation[variant][split][modality][metric]
    except KeyError:
        return None, None
    return entry["mean"], entry["std"]


def _fmt(mean, std=None):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{100 * mean:.1f}"
    return text + (f" ± {100 * std:.1f}" if std else "")


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 0.001 else "<0.001"


def _find(rows, a, b, split="all"):
    return next((row for row in rows if row["a"] == a and row["b"] == b and row["split"] == split), None)


def _said(row) -> str:
    return (f"{100 * row['difference']:+.1f} points (95% CI {100 * row['ci_low']:+.1f} to {100 * row['ci_high']:+.1f}, "
            f"p {_p(row['p_value'])}, Holm p {_p(row['p_holm'])}, {row['queries']} queries)")


def _by_split(rows, a, b) -> str:
    parts = []
    for split in SPLITS[1:]:
        row = _find(rows, a, b, split)
        if row:
            parts.append(f"{SPLIT_NAMES[split]} {100 * row['difference']:+.1f} ({row['verdict']}, Holm p "
                         f"{_p(row['p_holm'])})")
    return ("; by split: " + ", ".join(parts)) if parts else ""


def _claims(ablation: dict, per_query: dict, image_path: dict | None = None,
            saliency_batches: dict | None = None) -> tuple[list[str], list[dict]]:
    recall_rows = paired_comparisons(per_query, adjust=False)
    salience_rows = saliency_comparisons(saliency_batches)
    holm_verdicts(recall_rows + salience_rows)  # one family: every test this report makes
    rows = recall_rows
    lines = []
    removed_image = _find(rows, ("basic", "both"), ("basic", "text"))
    removed_text = _find(rows, ("basic", "both"), ("basic", "image"))
    if removed_image and removed_text:
        image_shown = removed_image["verdict"] == "higher"
        text_shown = removed_text["verdict"] == "higher"
        if image_shown:
            verdict = "Does not hold here: the image's contribution to `basic` is shown."
        elif text_shown:
            verdict = "Holds: the image's contribution is not shown while the text's is."
        else:
            verdict = "Undecided: neither modality's contribution is shown on these queries."
        text = (f"1. **`basic` neglects the image** (retrieval): removing the image changes Recall@10 by "
                f"{100 * -removed_image['difference'] + 0.0:+.1f} points (Holm p {_p(removed_image['p_holm'])}), removing "
                f"the text by {100 * -removed_text['difference'] + 0.0:+.1f} (Holm p {_p(removed_text['p_holm'])}). "
                + verdict)
        health = (image_path or {}).get("basic")
        if health and health.get("connector_probe_r10") is not None and health.get("zs_image_r10"):
            share = health["connector_probe_r10"] / health["zs_image_r10"]
            text += (f" Image path: the connector probe reaches {_fmt(health['connector_probe_r10'])} Recall@10 on "
                     f"image-only queries against {_fmt(health['zs_image_r10'])} for `zs-image` ({share:.2f}x): "
                     + ("the picture reaches the LLM, so an unused image is neglect."
                        if share >= 0.5 else "the picture hardly reaches the LLM, so this is a weak image path, "
                        "not (only) neglect."))
        else:
            text += (" Image-path health was not measured, so this cannot tell neglect from an image path that "
                     "never carried the picture.")
        lines.append(text)
    for a, b in SALIENCY_COMPARISONS:
        found = {row["measure"]: row for row in salience_rows if row["a"][0] == a and row["b"][0] == b}
        if "S_v/S_t" not in found or "S_visual/S_t" not in found:
            continue
        span, visual = found["S_v/S_t"], found["S_visual/S_t"]
        if visual["verdict"] == "higher":
            verdict = "the visual tokens themselves get more of the final token's saliency."
        elif span["verdict"] == "higher":
            verdict = ("the rise over the image span comes from the slot and its instruction, not from the visual "
                       "tokens.")
        else:
            verdict = "no rise is shown."
        lines.append(f"1. Saliency, `{a}` vs `{b}` (paired over {visual['queries']} batches of the same test pairs, "
                     f"layer-averaged): S_v / S_t {span['difference']:+.3f} (Holm p {_p(span['p_holm'])}), visual "
                     f"tokens alone S_visual / S_t {visual['difference']:+.3f} (Holm p {_p(visual['p_holm'])}): "
                     + verdict)
    for variant in ("micl", "late", "basic+late", "micl+late"):
        row = _find(rows, (variant, "both"), ("basic", "both"))
        if row:
            verdict = {"higher": "better than", "lower": "worse than",
                       "no difference shown": "not shown to differ from"}[row["verdict"]]
            image_only = _find(rows, (variant, "image"), ("basic", "image"))
            from_picture = (f" From the picture alone (image-only queries): {100 * image_only['difference']:+.1f} "
                            f"points ({image_only['verdict']}, Holm p {_p(image_only['p_holm'])})."
                            if image_only else "")
            lines.append(f"2. `{variant}` vs `basic`: {verdict} `basic`, {_said(row)}"
                         + _by_split(rows, (variant, "both"), ("basic", "both")) + "." + from_picture)
    best_rows = [row for row in rows if row["a"] == ("micl+late", "both") and row["split"] == "all"
                 and row["b"][0] in TRAINED]
    if best_rows:
        beaten = [row["b"][0] for row in best_rows if row["verdict"] == "higher"]
        losing = [row["b"][0] for row in best_rows if row["verdict"] == "lower"]
        tied = [row["b"][0] for row in best_rows if row["verdict"] == "no difference shown"]
        if len(beaten) == len(best_rows):
            verdict = "Holds: `micl+late` beats every other trained variant here."
        else:
            verdict = "Not shown: " + "; ".join(
                part for part in (f"worse than {', '.join(f'`{v}`' for v in losing)}" if losing else "",
                                  f"no difference shown from {', '.join(f'`{v}`' for v in tied)}" if tied else "")
                if part) + "."
        details = ", ".join(f"vs `{row['b'][0]}` {100 * row['difference']:+.1f} (Holm p {_p(row['p_holm'])})"
                            for row in best_rows)
        lines.append(f"3. **`micl+late` is the best trained variant** (all queries): {verdict} ({details}).")
    for other, what in (("zs-concat", "the zero-shot concatenation"),
                        (HEADROOM, "the tuned fusion of the trained `text` vectors with `zs-image` (headroom)")):
        row = _find(rows, ("micl+late", "both"), (other, "both"))
        if row:
            verdict = {"higher": "better than", "lower": "worse than",
                       "no difference shown": "not shown to differ from"}[row["verdict"]]
            lines.append(f"4. `micl+late` vs {what} `{other}`: {verdict} it, {_said(row)}"
                         + _by_split(rows, ("micl+late", "both"), (other, "both")) + ".")
    if rows or salience_rows:
        splits = len({row["split"] for row in rows})
        pairs = len({(row["a"], row["b"]) for row in rows})
        lines.append("")
        lines.append(f"{len(rows) + len(salience_rows)} paired comparisons were made ({len(rows)} of Recall@10: "
                     f"{pairs} variant pairs on up to {splits} query sets, all queries and the short/long splits; "
                     f"{len(salience_rows)} of saliency, paired over batches); every p is Holm-adjusted over all of "
                     "them. Recall@10 hits are per query; a variant with several seeds contributes each query's hit "
                     "averaged over its seeds. p: exact McNemar (one seed each side) or sign-flip permutation (seed "
                     "averages, saliency); intervals: paired bootstrap.")
    return lines, rows + salience_rows


def _comparison_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["| claim | comparison (a − b) | measure | n | split | Δ | 95% CI | p | Holm p | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        a, b = row["a"], row["b"]
        label = f"`{a[0]}` {a[1]} − `{b[0]}` {b[1]}"
        recall = row.get("measure", "Recall@10") == "Recall@10"
        scale, digits = (100, 1) if recall else (1, 3)
        lines.append(f"| {row['claim']} | {label} | {row.get('measure', 'Recall@10')} | {row['queries']} | "
                     f"{SPLIT_NAMES.get(row['split'], row['split'])} | {scale * row['difference']:+.{digits}f} | "
                     f"{scale * row['ci_low']:+.{digits}f} to {scale * row['ci_high']:+.{digits}f} | "
                     f"{_p(row['p_value'])} | {_p(row['p_holm'])} | {row['verdict']} |")
    return lines


def _pool_line(ablation: dict) -> str:
    for variant in ablation:
        pool, _ = _cell(ablation, variant, metric="pool")
        if pool:
            distractors, _ = _cell(ablation, variant, metric="distractors")
            queries, _ = _cell(ablation, variant, metric="queries")
            chance, _ = _cell(ablation, variant, metric="chance_recall@10")
            category, _ = _cell(ablation, variant, metric="chance_category_hit@10")
            return (f"Candidate pool: {int(pool)} held-out notes ({int(distractors or 0)} of them nobody's target) for "
                    f"{int(queries or 0)} queries. Chance: Recall@10 {_fmt(chance)}, Recall@50 "
                    f"{_fmt(_cell(ablation, variant, metric='chance_recall@50')[0])}, Recall@100 "
                    f"{_fmt(_cell(ablation, variant, metric='chance_recall@100')[0])}"
                    + (f", category hit@10 {_fmt(category)}" if category is not None else "") + ".")
    return "Candidate pool: not recorded."


def _plots(plan, ablation, saliency) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = list(ablation)
    figure, axis = plt.subplots(figsize=(10, 4))
    width = 0.27
    for offset, modality in enumerate(("both", "text", "image")):
        means = [(_cell(ablation, name, modality=modality)[0] or 0) * 100 for name in names]
        stds = [(_cell(ablation, name, modality=modality)[1] or 0) * 100 for name in names]
        axis.bar([i + (offset - 1) * width for i in range(len(names))], means, width, yerr=stds, label=modality)
    chance = next((_cell(ablation, n, metric="chance_recall@10")[0] for n in names
                   if _cell(ablation, n, metric="chance_recall@10")[0] is not None), None)
    if chance is not None:
        axis.axhline(100 * chance, color="grey", linestyle=":", label="chance")
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axis.set_ylabel("Recall@10 (%)")
    axis.set_title(f"{plan.dataset}: Recall@10 by variant and evaluated modality")
    axis.legend(title="modality")
    figure.tight_layout()
    path = plan.results_dir / "recall_by_modality.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    written.append(path.name)
    if saliency:
        panels = (("S_v", "S_v / S_t: image span (mICL: through the slot)"),
                  ("S_visual", "S_visual / S_t: visual tokens alone"),
                  ("S_slot", "S_slot / S_t: mICL instruction + slot"))
        figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for variant, rows in saliency.items():
            layers = [row["layer"] for row in rows]
            for axis, (key, _) in zip(axes, panels):
                values = [(row.get(key) if row.get(key) is not None else float("nan")) / max(row["S_t"], 1e-12)
                          for row in rows]
                axis.plot(layers, values, marker="o", label=variant)
        for axis, (_, title) in zip(axes, panels):
            axis.set_title(title, fontsize=9)
            axis.set_xlabel("layer")
            axis.legend()
        figure.tight_layout()
        path = plan.results_dir / "saliency_by_layer.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path.name)
    return written


def machine_line() -> str:
    """What the numbers were measured on, so a reader can tell a CPU budget from a GPU one."""
    from core.runtime import describe_machine

    machine = describe_machine()
    return f"{machine['cpu']}, {machine['cores']} cores, {machine.get('gpu', 'no GPU')}; torch {machine['torch']}"


def training_summary(run_folder: Path) -> dict | None:
    """Steps, wall minutes, mean step time and final loss of one training run, from its run.json and events."""
    from core.errors import WorkbenchError
    from core.runs import EVENTS_FILE, read_run_file

    try:
        info = read_run_file(run_folder)
        events = [json.loads(line) for line in (run_folder / EVENTS_FILE).read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError, WorkbenchError):
        return None
    steps = [event for event in events if "loss" in event and "step_s" in event]
    if not steps:
        return None
    return {"run": run_folder.name, "variant": info.get("variant"), "seed": info.get("train", {}).get("seed"),
            "steps": steps[-1]["step"], "step_s": sum(e["step_s"] for e in steps) / len(steps),
            "train_minutes": sum(e["step_s"] for e in steps) / 60, "final_loss": steps[-1]["loss"],
            "machines": _sittings_machines(events)}


def _escape_cell(text: str) -> str:
    """A table cell from free text (a CPU's model name): a pipe would split the cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _sittings_machines(events: list[dict]) -> list[str]:
    """Each distinct machine the run's sittings ran on ("CPU, N threads[, GPU]"), in order; empty for runs
    trained before the trainer wrote a start row per sitting."""
    seen: list[str] = []
    for event in events:
        machine = event.get("machine") if event.get("event") == "start" else None
        if not isinstance(machine, dict):
            continue
        described = f"{machine.get('cpu', '?')}, {machine.get('threads', '?')} threads"
        if machine.get("gpu"):
            described += f", {machine['gpu']}"
        if int(event.get("processes") or 1) > 1:
            described += f", {int(event['processes'])} processes"
        if described not in seen:
            seen.append(described)
    return seen


def _other_reports(plan) -> list[str]:
    """Reports of other reproductions kept under the results folder (e.g. results/sample/RESULTS.md)."""
    if not plan.results_dir.exists():
        return []
    found = sorted(path for path in plan.results_dir.glob("*/RESULTS.md") if path != plan.report_path)
    return [os.path.relpath(path, plan.report_path.parent) for path in found]


def _passes_text(passes: list[dict]) -> str:
    described = []
    for one in passes:
        what = (f"trained {len(one['trained'])} run(s)" if one["trained"]
                else "trained no run (reused every run, evaluation and saliency)")
        described.append(f"{one['started'].replace('T', ' ')}: {one['elapsed_s'] / 60:.0f} min, {what}")
    return ("Passes over this table (each reuses what an earlier one finished): " + "; ".join(described)
            + ". The wall time of the whole table is that of the pass that trained the runs.")


def _mean(rows, key):
    values = [row[key] for row in rows if row.get(key) is not None and not math.isnan(row[key])]
    return sum(values) / len(values) if values else None


def _g(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def _saliency_lines(saliency: dict | None) -> list[str]:
    if not saliency:
        return []
    lines = ["", "## Saliency per layer (visual neglect)", "",
             "Mean over layers of the saliency from the final token: S_v to the image span (under mICL it runs "
             "through the slot and its instruction), S_visual to the visual tokens alone, S_slot to the mICL "
             "instruction and slot, S_t to the other tokens; S_o over all other pairs.", "",
             "| variant | S_v | S_visual | S_slot | S_t | S_o | S_v / S_t | S_visual / S_t | batches |",
             "|---|---|---|---|---|---|---|---|---|"]
    for variant, rows in saliency.items():
        s_v, s_visual, s_slot, s_t, s_o = (_mean(rows, key) for key in ("S_v", "S_visual", "S_slot", "S_t", "S_o"))
        ratio = lambda x: f"{x / s_t:.3f}" if x is not None and s_t else "–"  # noqa: E731
        batches = rows[0].get("n_batches", "–") if rows else "–"
        lines.append(f"| `{variant}` | {_g(s_v)} | {_g(s_visual)} | {_g(s_slot)} | {_g(s_t)} | {_g(s_o)} | "
                     f"{ratio(s_v)} | {ratio(s_visual)} | {batches} |")
    return lines


def _image_path_lines(image_path: dict | None) -> list[str]:
    lines = ["", "## Image-path health", ""]
    if not image_path:
        return lines + ["Not measured in this pass (the workbench has no `core.analysis.image_path` yet): "
                        "image-only recall near chance cannot be told apart from a connector that never carried the "
                        "picture."]
    lines += ["| variant | " + " | ".join(IMAGE_PATH_KEYS) + " |", "|---" * (len(IMAGE_PATH_KEYS) + 1) + "|"]
    for variant, figures in image_path.items():
        cells = []
        for key in IMAGE_PATH_KEYS:
            value = (figures or {}).get(key)
            cells.append("–" if value is None else (_fmt(value) if key.endswith("_r10") else f"{value:.3g}"))
        lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    return lines + ["", "Recall figures in percent, on image-only queries; losses in nats (chance = ln(2B − 1)); "
                    "gate_llm_share: the late-fusion gate's mean z over held-out notes with a picture (the LLM "
                    "state's share of the final vector; it starts at 0.5), for n_m and, under mICL, n_v."]


def _headroom_lines(headroom: dict | None) -> list[str]:
    if not headroom:
        return []
    return ["", "## Headroom: a tuned fusion of frozen-in-place parts", "",
            f"`{HEADROOM}` scores w · (trained `text` run `{headroom['run']}`) + (1 − w) · (`zs-image`), w on a "
            f"grid of {len(headroom['grid'])} values from 0 to 1. w is tuned on held-out queries by 2-fold "
            f"cross-fitting ({' and '.join(str(n) for n in headroom['folds'])} queries; each half is scored with "
            f"the w that maximises Recall@10 on the other): chosen w = "
            f"{', '.join(str(w) for w in headroom['weights_by_fold'])}. The parts alone: text "
            f"{_fmt(headroom.get('text_part_r10'))}, image {_fmt(headroom.get('image_part_r10'))} Recall@10. "
            "What it gains over its parts is what any fusion could gain on this data."]


def _condition_lines(condition: dict, heading: str) -> tuple[list[str], list[dict]]:
    ablation = condition["ablation"]
    claims, rows = _claims(ablation, condition.get("per_query") or {}, condition.get("image_path"),
                           condition.get("saliency_batches"))
    lines = [f"## {heading}: claims", "", _pool_line(ablation), "", *claims, "",
             f"### {heading}: Recall@10 / @50 / @100 and category hit@10, all test pairs", "",
             "| variant | both | text only | image only | R@50 both | R@100 both | category hit@10 both |",
             "|---|---|---|---|---|---|---|"]
    for name in ablation:
        lines.append(f"| `{name}` | " + " | ".join([
            _fmt(*_cell(ablation, name)), _fmt(*_cell(ablation, name, modality="text")),
            _fmt(*_cell(ablation, name, modality="image")), _fmt(*_cell(ablation, name, metric="recall@50")),
            _fmt(*_cell(ablation, name, metric="recall@100")),
            _fmt(*_cell(ablation, name, metric="category_hit@10"))]) + " |")
    first = next(iter(ablation), None)
    if first is not None:
        chance = [_cell(ablation, first, metric=f"chance_{m}")[0] for m in
                  ("recall@10", "recall@10", "recall@10", "recall@50", "recall@100", "category_hit@10")]
        lines.append("| chance | " + " | ".join(_fmt(c) for c in chance) + " |")
    lines += ["", f"### {heading}: Recall@10 by split (both modalities)", "",
              "| variant | all | short query | long query | short target | long target |", "|---|---|---|---|---|---|"]
    for name in ablation:
        lines.append(f"| `{name}` | " + " | ".join(
            _fmt(*_cell(ablation, name, split=split)) for split in SPLITS) + " |")
    if rows:
        lines += ["", f"### {heading}: every paired comparison", "", *_comparison_table(rows)]
    return lines, rows


def _side_by_side(full: dict, weak: dict) -> list[str]:
    names = [name for name in weak["ablation"] if name in full["ablation"]]
    lines = ["## Both conditions side by side (Recall@10, all test pairs)", "",
             f"Weak text: the same notes, images, pairs, queries and pool with the text cut to the title (dataset "
             f"`{weak['dataset']}`); its short/long splits go by title length.", "",
             "| variant | full: both | weak: both | full: image only | weak: image only | full: text only | "
             "weak: text only |", "|---|---|---|---|---|---|---|"]
    for name in names:
        cells = []
        for modality in ("both", "image", "text"):
            cells += [_fmt(*_cell(full["ablation"], name, modality=modality)),
                      _fmt(*_cell(weak["ablation"], name, modality=modality))]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return lines


def _weak_section(weak: dict | None, key: str, render, heading: str, weak_heading: str) -> list[str]:
    """The weak-text condition's copy of a section the full condition has, under its own heading."""
    if not weak or not weak.get(key):
        return []
    return [line.replace(heading, weak_heading, 1) if line.startswith("#") else line for line in render(weak[key])]


def write_report(plan, main: dict, weak: dict | None = None) -> None:
    """RESULTS.md for `main` (a condition: dataset, ablation, per_query, saliency, image_path, headroom, passes,
    runs), with the weak-text condition beside it when given."""
    plots = _plots(plan, main["ablation"], main.get("saliency"))
    label = "Weak text (title only)" if getattr(plan, "weak_text", False) else "Full text"
    lines = [
        f"# Reproducing NoteLLM-2's findings on `{plan.dataset}`",
        "",
        f"Dataset `{main['dataset']}`; preset `{plan.preset}`, {plan.steps} steps of {plan.batch_pairs} pairs for "
        f"every variant; seeds {list(plan.main_seeds)} for `basic` and `micl+late`, {list(plan.other_seeds)} for the "
        "rest. Figures are Recall@k in percent (mean ± std over seeds). Every claim is judged by a paired test over "
        "the same queries.",
        "",
        _passes_text(main.get("passes") or []),
        "",
        f"Rerun: `python -m core reproduce --dataset {shlex.quote(plan.dataset)} --steps {plan.steps} "
        f"--preset {plan.preset} --main-seeds {len(plan.main_seeds)}` (and again with `--weak-text` for the "
        "weak-text condition); the workspace defaults to `~/.cache/notellm2-workbench/reproduce-DATASET`, outside "
        "the work tree, and a rerun reuses every finished run, evaluation and saliency measurement"
        + (", building the dataset there when it is missing (apt packages openclipart-png and openclipart-svg; "
           "by hand: `python -m core build-openclipart --import-as openclipart`)." if plan.dataset == "openclipart"
           else "."),
        "",
        f"Evaluated on: {machine_line()} (each run's training machine is in the runs table).",
        "",
    ]
    condition_lines, _ = _condition_lines(main, label)
    lines += condition_lines
    if weak:
        lines += ["", *_side_by_side(main, weak), ""]
        weak_lines, _ = _condition_lines(weak, "Weak text (title only)")
        lines += weak_lines
        if weak.get("passes"):
            lines += ["", "Weak-text condition: " + _passes_text(weak["passes"])]
    lines += _image_path_lines(main.get("image_path"))
    lines += _headroom_lines(main.get("headroom"))
    lines += _weak_section(weak, "image_path", _image_path_lines, "## Image-path health",
                           "## Weak text: image-path health")
    lines += _weak_section(weak, "headroom", _headroom_lines, "## Headroom:", "## Weak text: headroom,")
    lines += _saliency_lines(main.get("saliency"))
    lines += _weak_section(weak, "saliency", _saliency_lines, "## Saliency per layer",
                           "## Weak text: saliency per layer")
    runs = list(main.get("runs") or []) + list((weak or {}).get("runs") or [])
    if runs:
        lines += ["", "## Training runs (the fixed budget)", "",
                  "| run | variant | seed | steps | mean step (s) | training minutes | final loss | trained on |",
                  "|---|---|---|---|---|---|---|---|"]
        for run in runs:
            machines = "; ".join(_escape_cell(machine) for machine in run.get("machines") or []) or "not recorded"
            lines.append(f"| `{run['run']}` | `{run['variant']}` | {run['seed']} | {run['steps']} | "
                         f"{run['step_s']:.1f} | {run['train_minutes']:.1f} | {run['final_loss']:.3f} | {machines} |")
    folder = os.path.relpath(plan.results_dir, plan.report_path.parent)
    others = [path for path in _other_reports(plan) if not Path(path).parent.name == "weak-text"]
    if others:
        lines += ["", "## Other reproductions", "", *[f"- [{path}]({path})" for path in others]]
    lines += ["", *[f"![{name}]({folder}/{name})" for name in plots], "",
              f"Machine-readable: `{folder}/ablation.json` (variant -> split -> modality -> metric, with seeds; "
              f"`image_path`, `headroom`), `{folder}/per_query.json` (each query's ranks: the paired tests' input) "
              f"and `{folder}/saliency.json`" + (f"; the weak-text condition under `{folder}/weak-text/`." if weak
                                                  else "."), ""]
    plan.report_path.write_text("\n".join(lines))
