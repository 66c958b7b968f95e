"""Runs tab: every run of the workspace in one table, the curves of several overlaid, the settings of two side
by side, and renaming or deleting a run.

Everything comes from `Workbench.run_summaries` (run.json and events.jsonl through core.runs); renaming and
deleting go through `Workbench.rename_run` / `delete_run`, which check the names, refuse a run a job holds
and keep the shipped demo runs. After either, the page's "runs changed" signal refreshes the banner and every
variant list (app/main.py)."""
from __future__ import annotations

import json
import time

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.backend import Backend, message
from app.render import esc, info_toast, mark, md, warning_toast
from core.workbench import RunSummary

COLUMNS = ["run", "status", "variant", "preset", "steps", "dataset", "started", "wall time", "R@10 (held-out)",
           "at step", "zs-image R@10", "probe R@10", "n_v R@10", "connector variation", "visual loss",
           "chance loss", "kept"]
IMAGE_COLUMNS = (("zs_image_r10", "zs-image R@10"), ("connector_probe_r10", "probe R@10"), ("nv_r10", "n_v R@10"),
                 ("connector_variation", "connector variation"), ("visual_loss", "visual loss"),
                 ("chance_loss", "chance loss"))
SHIPPED = "shipped demo"
COLOURS = ("#4f6bed", "#e07b39", "#2a9d8f", "#b5179e", "#8a8a00", "#d62828", "#6a4c93", "#1d3557")
# run.json keys that are not settings: a config diff leaves them out.
NOT_SETTINGS = {"run", "status", "step", "checkpoint_step", "created_at", "updated_at", "renamed_from",
                "trained_as", "train.run"}
OVERLAY_MAX = len(COLOURS)


def wall(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _figure(value, digits: int = 3) -> str:
    return f"{float(value):.{digits}f}" if value is not None else "–"


def runs_table(summaries: list[RunSummary]) -> pd.DataFrame:
    rows = []
    for s in summaries:
        r = s.record
        row = {"run": r.run, "status": s.status, "variant": r.variant, "preset": r.preset,
               "steps": f"{r.step} / {r.total_steps}" if r.total_steps else str(r.step), "dataset": r.dataset,
               "started": r.created_at.replace("T", " "), "wall time": wall(s.wall_s),
               "R@10 (held-out)": _figure(s.recall10), "at step": "–" if s.eval_step is None else str(s.eval_step),
               "kept": SHIPPED if r.shipped else ""}
        for key, column in IMAGE_COLUMNS:
            row[column] = _figure(s.image_path.get(key))
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def summary_line(summaries: list[RunSummary]) -> str:
    if not summaries:
        return "No runs in this workspace yet: train one in **Fine-tune**."
    states: dict[str, int] = {}
    for s in summaries:
        states[s.status] = states.get(s.status, 0) + 1
    parts = ", ".join(f"{count} {md(state)}" for state, count in sorted(states.items()))
    shipped = sum(1 for s in summaries if s.record.shipped)
    kept = f" · {shipped} shipped demo run(s), kept as they are" if shipped else ""
    return f"**{len(summaries)} run(s)** in this workspace ({parts}){kept}."


def run_choices(summaries: list[RunSummary]) -> list[tuple[str, str]]:
    return [(f"{s.run} · {s.record.variant or '?'} · {s.status}" + (" · shipped demo" if s.record.shipped else ""),
             s.run) for s in summaries]


def overlay(backend: Backend, names) -> go.Figure:
    """One figure, three panels (training loss, held-out Recall@10, n_v Recall@10), one colour per run."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("training loss", "Recall@10 on held-out pairs",
                                                        "image side n_v Recall@10 (image only)"))
    for i, name in enumerate((names or [])[:OVERLAY_MAX]):
        events = backend.workbench.run_events(name)
        colour = COLOURS[i % len(COLOURS)]
        evals = [e for e in events if e.get("event") == "eval"]
        losses = [e for e in events if e.get("loss") is not None and e.get("step") is not None]
        recall = [e for e in evals if e.get("recall@10") is not None]
        nv = [e for e in evals if isinstance(e.get("image_path"), dict) and e["image_path"].get("nv_r10") is not None]
        shown = False
        for col, rows, value, mode in ((1, losses, lambda e: e["loss"], "lines"),
                                       (2, recall, lambda e: e["recall@10"], "lines+markers"),
                                       (3, nv, lambda e: e["image_path"]["nv_r10"], "lines+markers")):
            if not rows:
                continue
            fig.add_trace(go.Scatter(x=[e["step"] for e in rows], y=[value(e) for e in rows], mode=mode, name=name,
                                     legendgroup=name, showlegend=not shown, line=dict(color=colour)),
                          row=1, col=col)
            shown = True
    # meta: a figure drawn again is a new value, so the page redraws it (a figure first drawn in a hidden tab
    # is not sized until then)
    fig.update_layout(height=360, template="plotly_white", margin=dict(l=40, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=-0.25), meta={"drawn": time.time()})
    fig.update_xaxes(title_text="step")
    return fig


def settings_of(info) -> dict:
    """run.json's settings flattened to dotted keys (train.lr_new, model.prompt.max_topics, …)."""
    flat: dict = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif prefix not in NOT_SETTINGS:
            flat[prefix] = value

    walk("", dict(info or {}))
    return flat


def _shown(value) -> str:
    return "–" if value is None else value if isinstance(value, str) else json.dumps(value)


def config_diff(backend: Backend, names) -> str:
    """HTML: the settings two runs differ in, side by side (the first two of `names`)."""
    names = [n for n in (names or []) if n]
    if len(names) < 2:
        return '<div class="wb-notice" id="runs-diff-hint">Select two runs to see the settings they differ in.</div>'
    a, b = names[:2]
    left, right = settings_of(backend.workbench.run(a).info), settings_of(backend.workbench.run(b).info)
    keys = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
    if not keys:
        return f'<div class="wb-notice">Runs {esc(a)} and {esc(b)} have the same settings.</div>'
    rows = "".join(f"<tr><td><code>{esc(k)}</code></td><td>{esc(_shown(left.get(k)))}</td>"
                   f"<td>{esc(_shown(right.get(k)))}</td></tr>" for k in keys)
    return (f'<table class="wb-diff" id="runs-diff-table"><thead><tr><th>setting ({len(keys)} differ)</th>'
            f'<th>{esc(a)}</th><th>{esc(b)}</th></tr></thead><tbody>{rows}</tbody></table>')


def _changed() -> str:
    return f"runs:{time.time():.3f}"


def build(backend: Backend, dataset: gr.Dropdown, runs_changed: gr.Textbox | None = None):
    """`runs_changed`: the page's signal that the set of runs changed (app/main.py refreshes on it)."""
    if runs_changed is None:
        runs_changed = gr.Textbox(visible="hidden")
    summary = gr.Markdown(elem_id="runs-summary")
    table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), label="Every run of this workspace (newest first)",
                         interactive=False, wrap=True, max_height=360, elem_id="runs-table")
    with gr.Row():
        selected = gr.Dropdown(label=f"Runs to overlay (up to {OVERLAY_MAX}; the first two: settings diff)",
                               choices=[], multiselect=True, max_choices=OVERLAY_MAX, scale=4, elem_id="runs-select")
        refresh_btn = gr.Button("Refresh", scale=0, min_width=100, elem_id="runs-refresh")
    curves = gr.Plot(show_label=False, elem_id="runs-curves")
    gr.Markdown("### Settings that differ")
    diff = gr.HTML(config_diff(backend, []), elem_id="runs-diff")
    with gr.Accordion("Rename or delete a run", open=True):
        gr.Markdown("Shipped demo runs are kept as they are (start-up installs them again). A run a job is "
                    "training or encoding cannot be renamed or deleted. Deleting removes the run's weights, "
                    "checkpoints and curves and the vectors, evaluations and maps built from it.",
                    elem_classes=["wb-small"])
        with gr.Row():
            manage = gr.Dropdown(label="Run", choices=[], scale=2, elem_id="runs-manage")
            new_name = gr.Textbox(label="New name", scale=2, elem_id="runs-new-name")
            rename_btn = gr.Button("Rename", scale=1, elem_id="runs-rename-btn")
        with gr.Row():
            confirm = gr.Textbox(label="Type the run's name to confirm deleting it", scale=4, elem_id="runs-confirm")
            delete_btn = gr.Button("Delete run", variant="stop", scale=1, elem_id="runs-delete-btn")
        report = gr.Markdown(elem_id="runs-report")

    def listing(current_selected, current_manage, force: bool = False):
        """(summary, table, overlay choices, run choices, curves, diff) with the user's choices kept where they
        still exist. The curves are drawn here too: a dropdown set by the server need not fire its change."""
        summaries = backend.workbench.run_summaries()
        choices = run_choices(summaries)
        names = [name for _, name in choices]
        current_selected = list(current_selected or [])
        kept = [n for n in current_selected if n in names]
        if not kept:  # the newest two runs with curves to show
            kept = [s.run for s in summaries if s.status != "queued"][:2]
        # The selection is set only when it has to change (a run gone, nothing chosen): a refresh that
        # lands after the user changed it does not put the old one back.
        changed = force or kept != current_selected
        chosen = gr.update(choices=choices, value=kept) if changed else gr.update(choices=choices)
        manage_now = gr.update(choices=choices) if current_manage in names and not force else \
            gr.update(choices=choices, value=current_manage if current_manage in names else None)
        return (summary_line(summaries), runs_table(summaries), chosen, manage_now, overlay(backend, kept),
                config_diff(backend, kept))

    def on_refresh(current_selected, current_manage):
        try:
            return listing(current_selected, current_manage)
        except Exception as error:
            return f"{mark('error')} {md(message(error))}", *[gr.update()] * 5

    listed = [summary, table, selected, manage, curves, diff]
    refresh_btn.click(on_refresh, [selected, manage], listed, api_name="runs_list")

    def on_select(names):
        try:
            return overlay(backend, names), config_diff(backend, names)
        except Exception as error:
            return gr.update(), f'<div class="wb-notice error">{esc(message(error))}</div>'

    selected.change(on_select, [selected], [curves, diff], api_name="runs_overlay", show_progress="hidden")

    def on_rename(run, new, current_selected):
        if not run:
            return ("Choose the run to rename.", *[gr.update()] * 6, gr.update(), gr.update())
        try:
            record = backend.workbench.rename_run(run, new or "")
        except Exception as error:
            text = message(error)
            warning_toast(text.splitlines()[0][:200])
            return (f"{mark('error')} {md(text)}", *[gr.update()] * 6, gr.update(), gr.update())
        info_toast(f"Renamed run '{run}' to '{record.run}'")
        selected_now = [record.run if n == run else n for n in (current_selected or [])]
        listed_now = listing(selected_now, record.run, force=True)
        return (f"{mark('ok')} Renamed **{md(run)}** to **{md(record.run)}**; its cached vectors are rebuilt "
                "under the new name when next needed.", *listed_now, "", _changed())

    rename_btn.click(on_rename, [manage, new_name, selected], [report, *listed, new_name, runs_changed],
                     api_name="rename_run")

    def on_delete(run, typed, current_selected):
        if not run:
            return ("Choose the run to delete.", *[gr.update()] * 6, gr.update(), gr.update())
        try:
            backend.workbench.delete_run(run, confirm=typed or "")
        except Exception as error:
            text = message(error)
            warning_toast(text.splitlines()[0][:200])
            return (f"{mark('error')} {md(text)}", *[gr.update()] * 6, gr.update(), gr.update())
        info_toast(f"Deleted run '{run}'")
        listed_now = listing([n for n in (current_selected or []) if n != run], None, force=True)
        return (f"{mark('ok')} Deleted run **{md(run)}** with its vectors, evaluations and maps.", *listed_now, "",
                _changed())

    delete_btn.click(on_delete, [manage, confirm, selected], [report, *listed, confirm, runs_changed],
                     api_name="delete_run")
    return {"refresh": (on_refresh, [selected, manage], listed)}
