"""Fine-tune tab: start / stop / resume a training job in core's background workers and watch it live.

Training never runs in the UI process: core.service starts a job and the page polls `job_status` with a
gr.Timer. A page reload re-attaches to the newest running job through `list_jobs` and puts that job's
settings back in the form. The dataset a new run trains on is the one in the header's menu; the form says
which, and the progress box says which dataset the job shown trains on. When a job ends, the tab bumps the
page's "runs changed" signal, so the banner and every variant list are refreshed (app/main.py)."""
from __future__ import annotations

import time

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.backend import Backend, VARIANT_DESCRIPTIONS, message
from app.render import error_toast, esc, info_toast, mark, md, warning_toast
from core.train.presets import preset_descriptions
from core.workbench import Job, JobState

PRESETS = preset_descriptions()  # name -> one line, from core's preset table
POLL_S = 1.5
LOG_HEIGHT_PX = 240  # the log box's one height: lines arriving scroll inside it, the page below never moves
# The text block is never shorter than the box: with only min_height / max_height the box shrank to its text
# for a moment at every update, shaking the page below. Its top padding keeps the first line clear of the
# floating "Log" label; lines stay whole and monospace (a progress line is read as a line).
LOG_CSS = f"""
.wb-log {{ box-sizing: border-box; min-height: {LOG_HEIGHT_PX - 26}px; margin: 0; padding: 30px 10px 6px;
          font-family: var(--font-mono); font-size: 12px; line-height: 1.45; white-space: pre-wrap;
          overflow-wrap: anywhere; }}
.wb-log.empty {{ color: var(--body-text-color-subdued); font-family: inherit; }}
"""


def variant_of(image_mode: str, late: bool) -> str:
    base = {"none": "text", "basic": "basic", "mICL": "micl"}[image_mode]
    if late:
        return "late" if base == "text" else f"{base}+late"
    return base


def default_run_name(variant: str, dataset) -> str:
    return f"{variant.replace('+', '-')}-{dataset or 'data'}-{time.strftime('%H%M%S')}"


def overrides_from(batch, lr_llm, lr_new, llm, vision, lora) -> dict:
    """Only what the user set; empty fields keep the preset's value."""
    wanted = {"batch_pairs": int(batch) if batch else None, "lr_llm": float(lr_llm) if lr_llm else None,
              "lr_new": float(lr_new) if lr_new else None, "llm": (llm or "").strip() or None,
              "vision": (vision or "").strip() or None,
              "llm_tuning": lora if lora in ("lora", "full", "frozen") else None}
    return {k: v for k, v in wanted.items() if v is not None}


def start(backend: Backend, dataset, image_mode, late, preset, steps, run, batch, lr_llm, lr_new, llm, vision, lora):
    if not dataset:
        raise error_toast("Choose a dataset (import one in the Data tab).")
    if not steps or int(steps) < 1:
        raise error_toast("Steps must be a whole number of at least 1.")
    if batch and int(batch) < 2:  # blank (None or 0) keeps the preset
        raise error_toast("A batch needs at least 2 pairs (the other pairs are the negatives).")
    variant = variant_of(image_mode, late)
    run = (run or "").strip() or default_run_name(variant, dataset)
    job_id = backend.workbench.start_training(dataset, variant, run, preset=preset, steps=int(steps),
                                              **overrides_from(batch, lr_llm, lr_new, llm, vision, lora))
    info_toast(f"Started run '{run}' on dataset '{dataset}' ({variant}, {preset}, {int(steps)} steps)")
    return job_id, run


def dataset_note(dataset, job: Job | None = None) -> str:
    """Markdown: which dataset a new run trains on, and the one the job shown trains on when that differs."""
    if not dataset:
        text = f"{mark('info')} No dataset chosen: import one in **Data**, then choose it in the menu at the top."
    else:
        text = f"New runs train on dataset **{md(dataset)}** (the menu at the top)."
    if job is not None and job.dataset and job.dataset != dataset:
        verb = "trains" if job.active else "trained"
        text += f" The job shown, run **{md(job.run)}**, {verb} on **{md(job.dataset)}**."
    return text


def form_of(request) -> tuple:
    """The form's values (image mode, late fusion, preset, steps, run, batch, lr_llm, lr_new, llm, vision,
    LLM tuning) for a `TrainingRequest`: what the re-attached job was started with."""
    variant = request.variant
    late = variant.endswith("late")
    base = variant[:-len("+late")] if variant.endswith("+late") else ("text" if variant == "late" else variant)
    mode = {"text": "none", "basic": "basic", "micl": "mICL"}.get(base, "mICL")
    o = request.overrides
    return (mode, late, request.preset if request.preset in PRESETS else gr.update(), request.steps or gr.update(),
            request.run, o.get("batch_pairs"), o.get("lr_llm"), o.get("lr_new"), o.get("llm") or "",
            o.get("vision") or "", o.get("llm_tuning") or "preset")


def log_html(text: str | None) -> str:
    """The job's log tail as escaped HTML for the log box (it holds what the worker printed, paths and all)."""
    if not text:
        return '<pre class="wb-log empty">No log yet.</pre>'
    return f'<pre class="wb-log">{esc(text)}</pre>'


def log_box() -> gr.HTML:
    """A box of one fixed height (min = max) that scrolls inside and follows new lines at its bottom (Gradio's
    autoscroll: unless the reader scrolled up to read). A Textbox grew from 8 to 14 lines as lines came in,
    pushing the page, and then stayed at its top."""
    return gr.HTML(log_html(None), label="Log", show_label=True, container=True, min_height=LOG_HEIGHT_PX,
                   max_height=LOG_HEIGHT_PX, autoscroll=True, css_template=LOG_CSS, js_on_load=None,
                   elem_id="ft-log")


def progress_html(job: Job | None) -> str:
    if job is None:
        return '<div class="wb-job idle">No training job yet in this workspace.</div>'
    share = job.step / job.total if job.total else 0.0
    state = job.state.value
    return (f'<div class="wb-job {esc(state)}"><div class="wb-job-head"><b>{esc(job.run)}</b>'
            f'<span class="wb-badge state-{esc(state)}">{esc(state)}</span>'
            f'<span>step {job.step} / {job.total or "?"}</span>'
            f'<span class="wb-small ft-job-dataset">dataset {esc(job.dataset or "?")}</span>'
            f'<span class="wb-small">{esc(job.message)}</span>'
            f'</div><div class="wb-bar"><div style="width:{100 * share:.1f}%"></div></div></div>')


IMAGE_PATH_LINES = (("zs_image_r10", "frozen tower alone (zs-image)", "#888888", "dash"),
                    ("connector_probe_r10", "connector probe", "#e07b39", "solid"),
                    ("nv_r10", "image side n_v (mICL)", "#2a9d8f", "solid"),
                    ("image_only_r10", "note vector, image only", "#4f6bed", "solid"),
                    ("connector_variation", "connector variation", "#b5179e", "dot"))


def curves(events: list[dict]):
    fig = make_subplots(rows=1, cols=3, subplot_titles=("training loss", "Recall@k on held-out pairs",
                                                        "image path (image-only Recall@10)"))
    steps = [e.get("step") for e in events if e.get("loss") is not None]
    if steps:
        fig.add_trace(go.Scatter(x=steps, y=[e["loss"] for e in events if e.get("loss") is not None],
                                 mode="lines", name="loss", line=dict(color="#4f6bed")), row=1, col=1)
    visual = [e for e in events if e.get("visual_loss") is not None]
    if visual:
        fig.add_trace(go.Scatter(x=[e["step"] for e in visual], y=[e["visual_loss"] for e in visual], mode="lines",
                                 name="image-side loss (n_v)", line=dict(color="#2a9d8f")), row=1, col=1)
    evals = [e for e in events if e.get("event") == "eval"]
    chance = next((e["image_path"]["chance_loss"] for e in reversed(evals)
                   if isinstance(e.get("image_path"), dict) and e["image_path"].get("chance_loss")), None)
    if chance and steps:
        fig.add_trace(go.Scatter(x=[min(steps), max(steps)], y=[chance, chance], mode="lines",
                                 name="chance loss ln(2B-1)", line=dict(color="#999999", dash="dash")), row=1, col=1)
    metric_keys = sorted({k for e in events for k in e if k.startswith("recall@") and not k.endswith(("_low", "_high", "_lo", "_hi"))},
                         key=lambda k: int("".join(ch for ch in k.split("@")[1] if ch.isdigit()) or 0))
    for i, key in enumerate(metric_keys):
        rows = [e for e in events if e.get(key) is not None]
        fig.add_trace(go.Scatter(x=[e.get("step") for e in rows], y=[e[key] for e in rows], mode="lines+markers",
                                 name=key), row=1, col=2)
    health = [e for e in evals if isinstance(e.get("image_path"), dict) and e["image_path"]]
    for key, label, colour, dash in IMAGE_PATH_LINES:
        rows = [e for e in health if e["image_path"].get(key) is not None]
        if rows:
            fig.add_trace(go.Scatter(x=[e["step"] for e in rows], y=[e["image_path"][key] for e in rows],
                                     mode="lines+markers", name=label, line=dict(color=colour, dash=dash)),
                          row=1, col=3)
    fig.update_layout(height=340, template="plotly_white", margin=dict(l=40, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title_text="step")
    return fig


def image_path_warning(events: list[dict]) -> str:
    """The last evaluation's sentence when the run's image path looks broken, as escaped HTML."""
    last = next((e for e in reversed(events) if e.get("event") == "eval"), None)
    if not last or not last.get("warning"):
        return ""
    return f'<div class="wb-warning" id="ft-image-path-warning">{esc(last["warning"])}</div>'


def poll(backend: Backend, job_id, last_state, dataset=None):
    """(progress html, figure, log, job state, timer update, start/stop/resume buttons, dataset note, runs
    changed signal). The signal gets a new value when the job has just ended: the page refreshes its
    banner and variant lists then."""
    if not job_id:
        return (progress_html(None), gr.update(), log_html(None), last_state, gr.Timer(active=False),
                gr.update(interactive=True), gr.update(interactive=False), gr.update(interactive=False),
                dataset_note(dataset), gr.update())
    job = backend.workbench.job(job_id)
    # A job that failed before its worker created the run folder has no events yet.
    events = backend.workbench.run_events(job.run) if backend.workbench.runs.folder(job.run).exists() else []
    active = job.active
    changed = gr.update()
    if last_state and JobState(last_state).active and not active:
        changed = f"{job.job_id}:{job.state.value}:{time.time():.3f}"
        if job.state is JobState.FINISHED:
            info_toast(f"Run '{job.run}' finished on dataset '{job.dataset}': it is now a variant in every tab "
                       "showing that dataset.")
        else:
            warning_toast(f"Run '{job.run}' {job.state.value}: {job.message}"[:200])
    resumable = job.state in (JobState.CANCELLED, JobState.FAILED)
    return (progress_html(job) + image_path_warning(events), curves(events), log_html(job.log_tail), job.state.value,
            gr.Timer(active=active),
            gr.update(interactive=not active), gr.update(interactive=active), gr.update(interactive=resumable),
            dataset_note(dataset, job), changed)


def build(backend: Backend, dataset: gr.Dropdown, runs_changed: gr.Textbox | None = None):
    """`runs_changed`: the page's signal that the set of runs changed (app/main.py refreshes on it)."""
    if runs_changed is None:
        runs_changed = gr.Textbox(visible="hidden")
    job_id = gr.Textbox(visible="hidden")  # in the page, so that setting it (re-attaching) fires its change
    job_state = gr.State(None)
    run_of_job = gr.State(None)
    with gr.Row():
        with gr.Column(scale=2, min_width=340):
            with gr.Row():
                image_mode = gr.Radio(["none", "basic", "mICL"], value="mICL", label="Image in the prompt",
                                      elem_id="ft-image-mode")
                late = gr.Checkbox(value=True, label="Late fusion", elem_id="ft-late")
            dataset_md = gr.Markdown(dataset_note(None), elem_id="ft-dataset")
            variant_md = gr.Markdown(elem_classes=["wb-small"])
            preset = gr.Radio(list(PRESETS), value="cpu", label="Preset", elem_id="ft-preset")
            preset_md = gr.Markdown(PRESETS["cpu"], elem_classes=["wb-small"])
            with gr.Row():
                steps = gr.Number(value=100, precision=0, label="Steps", elem_id="ft-steps")
                batch = gr.Number(value=None, precision=0, label="Pairs per batch (blank: preset)")
            run = gr.Textbox(label="Run name (blank: automatic)", elem_id="ft-run")
            with gr.Accordion("Backbones and learning rates (blank: preset)", open=False):
                llm = gr.Textbox(label="LLM (hub name or local path)", placeholder="SmolLM2-135M-Instruct (offline)")
                vision = gr.Textbox(label="Vision encoder", placeholder="EfficientNet-Lite0 (offline)")
                lora = gr.Radio(["preset", "lora", "full", "frozen"], value="preset", label="LLM tuning")
                with gr.Row():
                    lr_llm = gr.Number(value=None, label="LR of the LLM (LoRA or full)")
                    lr_new = gr.Number(value=None, label="LR of new modules (connector, gate, head)")
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", elem_id="ft-start")
                stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="ft-stop")
                resume_btn = gr.Button("Resume", interactive=False, elem_id="ft-resume")
        with gr.Column(scale=3):
            progress = gr.HTML(progress_html(None), elem_id="ft-progress")
            plot = gr.Plot(show_label=False, elem_id="ft-curves")
            log = log_box()
    timer = gr.Timer(POLL_S, active=False)

    def describe_variant(mode, lt):
        v = variant_of(mode, lt)
        return f"Variant **{v}**: {VARIANT_DESCRIPTIONS[v]}."

    for control in (image_mode, late):
        control.change(describe_variant, [image_mode, late], variant_md, api_name=False)
    preset.change(lambda p: PRESETS[p], preset, preset_md, api_name=False)
    outputs = [progress, plot, log, job_state, timer, start_btn, stop_btn, resume_btn, dataset_md, runs_changed]

    def on_poll(j, s, ds):
        try:
            return poll(backend, j, s, ds)
        except Exception as error:
            return (f'<div class="wb-notice error">{esc(message(error))}</div>', gr.update(), gr.update(), s,
                    gr.Timer(active=False), gr.update(interactive=True), gr.update(), gr.update(), gr.update(),
                    gr.update())

    def on_start(ds, mode, lt, p, st, r, b, l1, l2, m1, m2, lo):
        try:
            jid, run_name = start(backend, ds, mode, lt, p, st, r, b, l1, l2, m1, m2, lo)
        except gr.Error:
            raise
        except Exception as error:
            warning_toast(message(error)[:200])
            return gr.update(), gr.update(), f'<div class="wb-notice error">{esc(message(error))}</div>', gr.update()
        return jid, run_name, progress_html(backend.workbench.job(jid)), gr.Timer(active=True)

    start_btn.click(on_start, [dataset, image_mode, late, preset, steps, run, batch, lr_llm, lr_new, llm, vision,
                               lora], [job_id, run_of_job, progress, timer], api_name="start_training").then(
        lambda: ("running", gr.update(interactive=False), gr.update(interactive=True)), None,
        [job_state, start_btn, stop_btn], api_name=False)

    def on_stop(j):
        if not j:
            return log_html("No job to stop.")
        try:
            backend.workbench.cancel_job(j)
            info_toast("Stopping: the job saves a checkpoint you can resume.")
        except Exception as error:
            warning_toast(message(error)[:200])
        return gr.update()

    stop_btn.click(on_stop, [job_id], [log], api_name="stop_training")

    def on_resume(j):
        try:
            run_name = backend.workbench.job(j).run
            new = backend.workbench.resume_training(run_name)
        except Exception as error:
            warning_toast(message(error)[:200])
            return gr.update(), gr.update()
        info_toast(f"Resuming run '{run_name}'")
        return new, gr.Timer(active=True)

    resume_btn.click(on_resume, [job_id], [job_id, timer], api_name="resume_training")

    def on_view(j, s):  # the job_view endpoint keeps its two inputs; the dataset note is left as it is
        out = on_poll(j, s, None)
        return (*out[:8], gr.update(), out[9])

    timer.tick(on_poll, [job_id, job_state, dataset], outputs, show_progress="hidden", api_name=False)
    job_id.change(on_view, [job_id, job_state], outputs, show_progress="hidden", api_name="job_view")
    form = [image_mode, late, preset, steps, run, batch, lr_llm, lr_new, llm, vision, lora]

    def attach(ds):
        """The newest training job (a running one first); a running job's settings go back in the form."""
        job = backend.workbench.latest_job("train")
        if job is None:
            return ("", gr.update(), *[gr.update()] * len(form), dataset_note(ds))
        values = [gr.update()] * len(form)
        if job.active:
            try:
                values = list(form_of(backend.workbench.training_request(job.run)))
            except Exception as error:  # no run.json yet (the worker is starting): the job's own fields
                message(error)  # logged
                values[3], values[4] = (job.total or gr.update()), job.run
        return (job.job_id, job.run, *values, dataset_note(ds, job))

    def on_dataset(ds, j):
        try:
            job = backend.workbench.job(j) if j else None
        except Exception as error:
            message(error)
            job = None
        return dataset_note(ds, job)

    return {"load": (attach, [dataset], [job_id, run_of_job, *form, dataset_md]),
            "init": (describe_variant, [image_mode, late], [variant_md]),
            "refresh": (on_dataset, [dataset, job_id], [dataset_md])}
