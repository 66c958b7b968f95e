"""RESULTS.md and its plots from the reproduction's numbers. The claims are stated in advance and judged by
the numbers, whichever way they come out; differences smaller than the spread across seeds are called so."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

MAIN_METRIC = "recall@10"


def _cell(ablation, variant, split="all", modality="both", metric=MAIN_METRIC):
    try:
        entry = ablation[variant][split][modality][metric]
    except KeyError:
        return None, None
    return entry["mean"], entry["std"]


def _half_interval(ablation, variant) -> float:
    low, _ = _cell(ablation, variant, metric="recall@10_ci_low")
    high, _ = _cell(ablation, variant, metric="recall@10_ci_high")
    return (high - low) / 2 if None not in (low, high) else 0.0


def _fmt(mean, std=None):
    if mean is None:
        return "–"
    text = f"{100 * mean:.1f}"
    return text + (f" ± {100 * std:.1f}" if std else "")


def _claims(ablation) -> list[str]:
    lines = []
    both, _ = _cell(ablation, "basic")
    text_only, _ = _cell(ablation, "basic", modality="text")
    image_only, _ = _cell(ablation, "basic", modality="image")
    if None not in (both, text_only, image_only):
        neglect = (both - text_only) < 0.5 * (both - image_only)
        lines.append(f"1. **`basic` neglects the image**: full {_fmt(both)}, text only {_fmt(text_only)}, image only "
                     f"{_fmt(image_only)} (Recall@10). "
                     + ("Holds: removing the image costs far less than removing the text."
                        if neglect else "Does not hold here: the image carries weight in `basic`."))
    basic, basic_std = _cell(ablation, "basic")
    for variant in ("micl", "basic+late", "late", "micl+late"):
        mean, std = _cell(ablation, variant)
        if mean is None or basic is None:
            continue
        # The larger of the seed spread and half the bootstrap 95% interval over queries: with one seed and a
        # small test split, the interval is what separates a difference from noise.
        spread = max(basic_std or 0, std or 0, _half_interval(ablation, "basic"), _half_interval(ablation, variant))
        verdict = ("better than" if mean - basic > spread else "worse than" if basic - mean > spread
                   else "not distinguishable from")
        lines.append(f"2. `{variant}` vs `basic`: {_fmt(mean, std)} vs {_fmt(basic, basic_std)}: {verdict} `basic` "
                     f"(margin used: ±{100 * spread:.1f}).")
    trained = {v: _cell(ablation, v)[0] for v in ("text", "basic", "micl", "late", "basic+late", "micl+late")}
    trained = {v: m for v, m in trained.items() if m is not None}
    if trained:
        top = max(trained.values())
        best = [v for v, m in trained.items() if m == top]
        verdict = "`micl+late` is not the best here."
        if "micl+late" in best:
            others = {v: m for v, m in trained.items() if v != "micl+late"}
            runner_up = max(others, key=others.get) if others else None
            if runner_up is None:
                verdict = "`micl+late` is best, as the paper claims."
            else:
                margin = max(_cell(ablation, "micl+late")[1] or 0, _cell(ablation, runner_up)[1] or 0,
                             _half_interval(ablation, "micl+late"), _half_interval(ablation, runner_up))
                lead = top - others[runner_up]
                verdict = (f"`micl+late` is best, as the paper claims, by {100 * lead:.1f} points over `{runner_up}` "
                           + ("(more than the margin" if lead > margin else "(within the margin")
                           + f" ±{100 * margin:.1f}" + (")." if lead > margin else ", so not shown to be better)."))
        lines.append(f"3. Best trained variant on Recall@10 (all pairs, both modalities): "
                     f"{', '.join(f'`{v}`' for v in best)} ({_fmt(top)}); " + verdict)
    nl2, nl2_std = _cell(ablation, "micl+late")
    concat, _ = _cell(ablation, "zs-concat")
    if None not in (nl2, concat):
        margin = max(nl2_std or 0, _half_interval(ablation, "micl+late"), _half_interval(ablation, "zs-concat"))
        lines.append(f"4. `micl+late` {_fmt(nl2, nl2_std)} vs the zero-shot `zs-concat` {_fmt(concat)}: "
                     f"{'+' if nl2 >= concat else ''}{100 * (nl2 - concat):.1f} points "
                     + ("(beyond" if abs(nl2 - concat) > margin else "(within") + f" the margin ±{100 * margin:.1f}).")
    return lines


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
        figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for variant, rows in saliency.items():
            layers = [row["layer"] for row in rows]
            axes[0].plot(layers, [row["S_v"] for row in rows], marker="o", label=variant)
            axes[1].plot(layers, [row["S_v"] / max(row["S_t"], 1e-12) for row in rows], marker="o", label=variant)
        axes[0].set_title("S_v: final token -> image tokens")
        axes[1].set_title("S_v / S_t")
        for axis in axes:
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
    try:
        info = json.loads((run_folder / "run.json").read_text())
        events = [json.loads(line) for line in (run_folder / "events.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    steps = [event for event in events if "loss" in event and "step_s" in event]
    if not steps:
        return None
    return {"run": run_folder.name, "variant": info.get("variant"), "seed": info.get("train", {}).get("seed"),
            "steps": steps[-1]["step"], "step_s": sum(e["step_s"] for e in steps) / len(steps),
            "train_minutes": sum(e["step_s"] for e in steps) / 60, "final_loss": steps[-1]["loss"]}


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


def write_report(plan, ablation: dict, saliency: dict | None, passes: list[dict],
                 runs: list[dict] | None = None) -> None:
    plots = _plots(plan, ablation, saliency)
    lines = [
        f"# Reproducing NoteLLM-2's findings on `{plan.dataset}`",
        "",
        f"Dataset `{plan.dataset}`; preset `{plan.preset}`, {plan.steps} steps of {plan.batch_pairs} pairs for every "
        f"variant; seeds {list(plan.main_seeds)} for `basic` and `micl+late`, {list(plan.other_seeds)} for the rest. "
        "Figures are Recall@k in percent (mean ± std over seeds).",
        "",
        _passes_text(passes),
        "",
        f"Rerun: `python -m core reproduce --dataset {shlex.quote(plan.dataset)} --steps {plan.steps} "
        f"--preset {plan.preset} --main-seeds {len(plan.main_seeds)}`"
        + (" after building the dataset once with `python -m core build-openclipart --import-as openclipart` "
           "(apt packages openclipart-png and openclipart-svg)." if plan.dataset == "openclipart" else "."),
        "",
        f"Measured on: {machine_line()}.",
        "",
        "## Claims",
        "",
        *_claims(ablation),
        "",
        "## Recall@10 / @50 / @100, all test pairs",
        "",
        "| variant | both | text only | image only | R@50 both | R@100 both |",
        "|---|---|---|---|---|---|",
    ]
    for name in ablation:
        lines.append(f"| `{name}` | " + " | ".join([
            _fmt(*_cell(ablation, name)), _fmt(*_cell(ablation, name, modality="text")),
            _fmt(*_cell(ablation, name, modality="image")), _fmt(*_cell(ablation, name, metric="recall@50")),
            _fmt(*_cell(ablation, name, metric="recall@100"))]) + " |")
    lines += ["", "## Recall@10 by split (both modalities)", "",
              "| variant | all | short query | long query | short target | long target |", "|---|---|---|---|---|---|"]
    for name in ablation:
        lines.append(f"| `{name}` | " + " | ".join(
            _fmt(*_cell(ablation, name, split=split)) for split in
            ("all", "short_query", "long_query", "short_target", "long_target")) + " |")
    if saliency:
        lines += ["", "## Saliency per layer (NOTELLM2.md, 'Visual neglect')", "",
                  "| variant | mean S_v | mean S_t | mean S_o | S_v / S_t |", "|---|---|---|---|---|"]
        for variant, rows in saliency.items():
            mean = lambda key: sum(row[key] for row in rows) / max(len(rows), 1)
            lines.append(f"| `{variant}` | {mean('S_v'):.3g} | {mean('S_t'):.3g} | {mean('S_o'):.3g} | "
                         f"{mean('S_v') / max(mean('S_t'), 1e-12):.3f} |")
    if runs:
        lines += ["", "## Training runs (the fixed budget)", "",
                  "| run | variant | seed | steps | mean step (s) | training minutes | final loss |",
                  "|---|---|---|---|---|---|---|"]
        for run in runs:
            lines.append(f"| `{run['run']}` | `{run['variant']}` | {run['seed']} | {run['steps']} | "
                         f"{run['step_s']:.1f} | {run['train_minutes']:.1f} | {run['final_loss']:.3f} |")
    folder = os.path.relpath(plan.results_dir, plan.report_path.parent)
    others = _other_reports(plan)
    if others:
        lines += ["", "## Other reproductions", "", *[f"- [{path}]({path})" for path in others]]
    lines += ["", *[f"![{name}]({folder}/{name})" for name in plots], "",
              f"Machine-readable: `{folder}/ablation.json` (variant -> split -> modality -> metric, with seeds) and "
              f"`{folder}/saliency.json`.", ""]
    plan.report_path.write_text("\n".join(lines))
