"""Data tab: import an upload (atomic, with a validation report), browse a dataset, its statistics, and
export it with what the workspace computed on it (one .zip of Parquet and CSV files)."""
from __future__ import annotations

import csv
import os
import tempfile
import time
import zipfile
from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from app.backend import Backend, message
from app.render import info_toast, mark, md, warning_toast

PAGE = 40
ALL = "(all categories)"
PROBLEMS_SHOWN = 1_000  # rows of the validation table sent to the page; the full report is a CSV download
REPORT_COLUMNS = ["kind", "file", "row", "reason"]
REPORTS_DIR = Path(tempfile.gettempdir()) / "notellm2-reports"
REPORT_MAX_AGE_S = 3600
EXPORTS_DIR = Path(tempfile.gettempdir()) / "notellm2-exports"
NOTES_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet", ".pq")
PARQUET = (".parquet", ".pq")


def datasets_table(backend: Backend) -> pd.DataFrame:
    rows = []
    for d in backend.store.list_datasets():
        rows.append({"dataset": d.name, "notes": d.notes, "pairs": d.pairs, "images": d.images,
                     "categories": getattr(d, "categories", ""), "skipped rows": getattr(d, "skipped", 0),
                     "source": d.source, "imported": d.created_at})
    return pd.DataFrame(rows, columns=["dataset", "notes", "pairs", "images", "categories", "skipped rows",
                                       "source", "imported"])


def _path(file) -> str | None:
    if file is None:
        return None
    return str(getattr(file, "name", file))


def check_upload(name: str, notes_file, pairs_file, images_zip) -> str | None:
    """Problems the page can name before core reads anything (core validates the contents)."""
    if not (name or "").strip():
        return "Give the dataset a name."
    notes = _path(notes_file)
    if not notes:
        return ("Choose a notes file (.csv or .jsonl with note_id, title, content, image[, topics][, category], "
                "or a .parquet table with those columns).")
    if Path(notes).suffix.lower() not in NOTES_SUFFIXES:
        return f"The notes file must be .csv, .jsonl or .parquet, not {Path(notes).name}."
    pairs = _path(pairs_file)
    parquet_notes = Path(notes).suffix.lower() in PARQUET
    pair_suffixes = (".csv", *PARQUET) if parquet_notes else (".csv",)
    if pairs and Path(pairs).suffix.lower() not in pair_suffixes:
        return (f"The pairs file must be .csv (note_id_1,note_id_2){' or .parquet' if parquet_notes else ''}, "
                f"not {Path(pairs).name}.")
    images = _path(images_zip)
    if images:
        if Path(images).suffix.lower() != ".zip":
            return f"Images must come as a .zip, not {Path(images).name}."
        if not zipfile.is_zipfile(images):
            return f"{Path(images).name} is not a readable zip archive; nothing was imported."
    return None


def import_upload(backend: Backend, name, notes_file, pairs_file, images_zip, skip_bad,
                  progress=gr.Progress()):
    """Returns (report markdown, problems table (its first rows), datasets table, dataset dropdown update,
    full report CSV path or None)."""
    name = (name or "").strip()
    empty = pd.DataFrame(columns=["kind", "file", "row", "reason"])
    problem = check_upload(name, notes_file, pairs_file, images_zip)
    if problem:
        warning_toast(problem)
        discard_uploads(notes_file, pairs_file, images_zip)
        return f"{mark('error')} {md(problem)}", empty, datasets_table(backend), gr.update(), None

    def report_progress(done, total, msg):
        progress((done, max(total, 1)), desc=msg)

    try:
        # CSV / JSONL or Parquet (image bytes in the table, or paths into the zip): the Workbench routes it.
        report = backend.workbench.import_files(name, _path(notes_file), _path(pairs_file), _path(images_zip),
                                                skip_bad=bool(skip_bad), progress=report_progress)
    except Exception as error:
        rows = [{"kind": "problem", "file": p[0] if len(p) > 0 else "", "row": p[1] if len(p) > 1 else "",
                 "reason": p[2] if len(p) > 2 else str(p)} for p in _problems(error)]
        text = message(error)
        warning_toast(f"Nothing imported: {text.splitlines()[0][:200]}")
        table, more, full = problem_report(rows)
        return (f"{mark('error')} **Nothing imported.** {md(text)}{more}\n\nThe workspace is unchanged.",
                table, datasets_table(backend), gr.update(), full)
    finally:
        discard_uploads(notes_file, pairs_file, images_zip)  # read and copied: the temp copies can go now
    rows = ([{"kind": "note", "file": f, "row": r, "reason": why} for f, r, why in report.skipped]
            + [{"kind": "pair", "file": f, "row": r, "reason": why} for f, r, why in getattr(report, "pairs_skipped", [])]
            + [{"kind": "archive", "file": f, "row": r, "reason": why} for f, r, why in getattr(report, "ignored", [])])
    summary = report.summary() if hasattr(report, "summary") else (
        f"imported {report.imported} of {report.read} notes, {report.pairs_imported} of {report.pairs_read} pairs")
    info_toast(f"Imported '{name}'")
    names = backend.dataset_names()
    table, more, full = problem_report(rows)
    return (f"{mark('ok')} {md(summary)}{more}", table, datasets_table(backend), gr.update(choices=names, value=name), full)


def problem_report(rows: list[dict]) -> tuple[pd.DataFrame, str, str | None]:
    """(the first PROBLEMS_SHOWN rows as a table, a Markdown sentence about the rest, the path of a CSV of
    all rows or None when there is none). A report of 300,000 rows would take the browser half a minute."""
    if not rows:
        return pd.DataFrame(columns=REPORT_COLUMNS), "", None
    REPORTS_DIR.mkdir(exist_ok=True)
    for old in REPORTS_DIR.glob("*.csv"):  # Gradio serves its own copy; ours need not outlive the request
        if time.time() - old.stat().st_mtime > REPORT_MAX_AGE_S:
            old.unlink(missing_ok=True)
    handle, path = tempfile.mkstemp(prefix="validation-report-", suffix=".csv", dir=REPORTS_DIR)
    with os.fdopen(handle, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    more = ""
    if len(rows) > PROBLEMS_SHOWN:
        more = (f"\n\nThe table shows the first {PROBLEMS_SHOWN:,} of {len(rows):,} problems "
                f"({len(rows) - PROBLEMS_SHOWN:,} more in the downloadable report).")
    return pd.DataFrame(rows[:PROBLEMS_SHOWN], columns=REPORT_COLUMNS), more, path


def _forget_old(folder: Path, pattern: str) -> None:
    """Files a past request left for Gradio to serve: it keeps its own copy, so ours need not outlive an hour."""
    for old in folder.glob(pattern):
        try:
            if time.time() - old.stat().st_mtime > REPORT_MAX_AGE_S:
                old.unlink(missing_ok=True)
        except OSError:
            pass  # another request removed it first


def export_selected(backend: Backend, dataset, neighbours, progress=gr.Progress()):
    """(status markdown, the .zip's path or None): the dataset with its images, and the vectors, neighbours,
    maps and evaluations the workspace has computed on it, as Parquet (and CSV for the tables)."""
    if not dataset:
        return f"{mark('error')} Choose the dataset to export in the menu above.", None
    try:
        k = int(neighbours if neighbours not in (None, "") else 10)
    except (TypeError, ValueError):
        return f"{mark('error')} Neighbours must be a whole number (0 for none).", None
    EXPORTS_DIR.mkdir(exist_ok=True)
    _forget_old(EXPORTS_DIR, "*.zip")
    archive = EXPORTS_DIR / f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.zip"

    def report_progress(done, total, msg):
        progress((done, max(total, 1)), desc=msg)

    try:
        manifest = backend.workbench.export_archive(dataset, archive, neighbours=k, progress=report_progress)
    except Exception as error:
        text = message(error)
        warning_toast(f"Nothing exported: {text.splitlines()[0][:200]}")
        return f"{mark('error')} **Nothing exported.** {md(text)}", None
    info_toast(f"Exported '{dataset}'")
    return export_summary(manifest), str(archive)


def export_summary(manifest: dict) -> str:
    """What an export holds and what it left out, in Markdown (every name escaped)."""
    written = manifest.get("written", [])
    vectors = manifest.get("vectors", [])
    maps = [Path(p).stem for p in written if p.startswith("maps/") and p.endswith(".parquet")]
    lines = [f"{mark('ok')} **{md(manifest['dataset'])}**: {manifest['notes']:,} notes, {manifest['pairs']:,} "
             "pairs and their images as `notes.parquet` (a Hugging Face Image column) and `notes.csv` + "
             "`images/` (the upload format)."]
    if vectors:
        lines.append(f"Vectors of {', '.join(md(v) for v in vectors)} (`vectors/`), their exact neighbours "
                     f"(`neighbours/`){', maps of ' + ', '.join(md(m) for m in maps) + ' (`maps/`)' if maps else ''}.")
    if manifest.get("metrics"):
        lines.append(f"{manifest['metrics']} current evaluation(s) in `metrics.parquet`.")
    left_out = manifest.get("left_out", [])
    if left_out:
        lines.append("Left out: " + "; ".join(md(reason) for reason in left_out[:8])
                     + (f"; and {len(left_out) - 8} more (see `manifest.json`)." if len(left_out) > 8 else "."))
    return "  \n".join(lines)


def discard_uploads(*files) -> None:
    """Delete uploaded files from Gradio's upload folder once they are imported or refused (never a file
    outside it: a Python caller may pass its own paths)."""
    upload_root = Path(gr.utils.get_upload_folder()).resolve()
    for file in files:
        path = _path(file)
        if not path:
            continue
        resolved = Path(path).resolve()
        if upload_root in resolved.parents:
            resolved.unlink(missing_ok=True)


def delete_selected(backend: Backend, dataset, confirm):
    """Returns (status markdown, datasets table, dataset dropdown update). Refused unless the name is typed."""
    if not dataset:
        return "Choose the dataset to delete in the dataset menu above.", datasets_table(backend), gr.update()
    try:
        backend.workbench.delete_dataset(dataset, confirm=confirm or "")
    except Exception as error:
        text = message(error)
        warning_toast(text.splitlines()[0][:200])
        return f"{mark('error')} {md(text)}", datasets_table(backend), gr.update()
    info_toast(f"Deleted '{dataset}'")
    names = backend.dataset_names()
    return (f"{mark('ok')} Deleted **{md(dataset)}**, its images no other dataset uses, and its cached vectors. "
            "Runs trained on it are kept.", datasets_table(backend),
            gr.update(choices=names, value=backend.default_dataset()))


def _problems(error) -> list:
    problems = getattr(error, "problems", None) or []
    out = []
    for p in problems:
        out.append(tuple(p) if isinstance(p, (tuple, list)) or hasattr(p, "_fields") else (str(p),))
    return out


def browse(backend: Backend, dataset, category, text, page):
    """A page of the gallery: (gallery items, caption markdown)."""
    if not dataset:
        return [], "No dataset selected."
    notes = backend.store.notes(dataset)
    if category and category != ALL:
        notes = [n for n in notes if n.category == category]
    needle = (text or "").strip().lower()
    if needle:
        notes = [n for n in notes if needle in (n.title or "").lower() or needle in (n.content or "").lower()
                 or any(needle in t.lower() for t in n.topics)]
    pages = max(1, -(-len(notes) // PAGE))
    page = min(max(1, int(page or 1)), pages)
    shown = notes[(page - 1) * PAGE: page * PAGE]
    items = [(n.image, f"{n.title or '(untitled)'} · {n.category or 'no category'}") for n in shown if n.image]
    without = sum(1 for n in shown if not n.image)
    caption = f"{len(notes)} notes match · page {page} of {pages}"
    if without:
        caption += f" · {without} on this page have no image (not shown)"
    return items, caption


def stats(backend: Backend, dataset):
    """(markdown summary, category bar chart, category dropdown update)."""
    if not dataset:
        return "No dataset selected.", None, gr.update(choices=[ALL], value=ALL)
    info = backend.store.dataset(dataset)
    categories = backend.store.categories(dataset)
    notes = backend.workbench.notes(dataset)
    related = backend.related(dataset)
    degrees = [len(related.get(n.note_id, ())) for n in notes]
    lengths = sorted(len(n.title or "") + len(n.content or "") for n in notes)
    unpaired = sum(1 for d in degrees if d == 0)
    with_image = sum(1 for n in notes if n.image)
    median_len = lengths[len(lengths) // 2] if lengths else 0
    lines = [f"**{md(dataset)}**: {len(notes)} notes, {sum(len(v) for v in related.values()) // 2} related pairs, "
             f"{with_image} notes with an image ({100 * with_image / max(len(notes), 1):.0f}%), "
             f"{len(categories)} categories.",
             f"Pairs per note: median {sorted(degrees)[len(degrees) // 2] if degrees else 0}, max {max(degrees, default=0)};"
             f" {unpaired} notes have no pair (they can be neighbours but never queries).",
             f"Text length (title + content): median {median_len} characters."]
    lines.append(f"Source: {md(info.source)} · imported {md(info.created_at)}"
                 + (f" · {info.skipped} rows skipped at import" if info.skipped else ""))
    cats = list(categories.items())
    fig = go.Figure(go.Bar(x=[c or "(none)" for c, _ in cats], y=[n for _, n in cats],
                           marker_color="#4f6bed", hovertemplate="%{x}: %{y} notes<extra></extra>"))
    fig.update_layout(title="Notes per category", height=300, margin=dict(l=40, r=10, t=40, b=110),
                      xaxis_tickangle=-40, template="plotly_white")
    return "\n\n".join(lines), fig, gr.update(choices=[ALL] + [c for c, _ in cats if c], value=ALL)


def build(backend: Backend, dataset: gr.Dropdown):
    gr.Markdown("Import notes and related pairs, check what was read, browse what is stored. "
                "An import is all-or-nothing unless *skip bad rows* is ticked; every skipped row is listed below.",
                elem_classes=["wb-intro"])
    table = gr.Dataframe(label="Datasets in this workspace", interactive=False, wrap=True, max_height=200,
                         elem_id="datasets-table")
    with gr.Row():
        with gr.Column(scale=2):
            summary = gr.Markdown(elem_id="data-summary")
        with gr.Column(scale=3):
            cat_plot = gr.Plot(label="Categories", show_label=False)
    with gr.Accordion("Import a dataset", open=False):
        gr.Markdown("`notes.csv` or `.jsonl` with `note_id,title,content,image[,topics][,category]` "
                    "(NoteLLM's `noteid,title,content,imgid,category` works as is); `pairs.csv` with "
                    "`note_id_1,note_id_2`; images as a `.zip` whose file names match the `image` column. "
                    "A `.parquet` table with the same columns works too: its image column holds the image bytes "
                    "(or a Hugging Face Image column) or paths into the `.zip`; its pairs may be `.parquet`.")
        with gr.Row():
            name = gr.Textbox(label="Dataset name", placeholder="my-notes", scale=1)
            notes_file = gr.File(label="Notes (.csv / .jsonl / .parquet)", file_types=list(NOTES_SUFFIXES),
                                 scale=1, elem_id="import-notes")
            pairs_file = gr.File(label="Related pairs (.csv / .parquet)", file_types=[".csv", *PARQUET], scale=1,
                                 elem_id="import-pairs")
            images_zip = gr.File(label="Images (.zip)", file_types=[".zip"], scale=1)
        with gr.Row():
            skip_bad = gr.Checkbox(label="Skip bad rows (import the rest, list the skipped ones)", value=False)
            import_btn = gr.Button("Import", variant="primary", elem_id="import-btn")
        import_report = gr.Markdown(elem_id="import-report")
        problems = gr.Dataframe(label=f"Validation report: rows left out or refused (the first {PROBLEMS_SHOWN:,})",
                                interactive=False, wrap=True, max_height=240)
        report_file = gr.File(label="Full validation report (CSV)", interactive=False, elem_id="import-report-file")
    with gr.Accordion("Export this dataset", open=False):
        gr.Markdown("One `.zip` of the dataset chosen above: notes and pairs as Parquet and CSV with the images, "
                    "and what this workspace has computed on it: the vectors of every variant encoded on it "
                    "(Search, Compare or `python -m core encode` fill them), their exact nearest neighbours, "
                    "the Explore maps already drawn, and current evaluations. pandas, Hugging Face `datasets`, "
                    "Embedding Atlas and FiftyOne open the Parquet files; Import reads `notes.parquet` back.")
        with gr.Row():
            export_k = gr.Number(value=10, precision=0, minimum=0, label="Neighbours per note (0: none)", scale=1,
                                 elem_id="export-k")
            export_btn = gr.Button("Export", scale=1, elem_id="export-btn")
        export_report = gr.Markdown(elem_id="export-report")
        export_file = gr.File(label="Export (.zip)", interactive=False, elem_id="export-file")
    with gr.Accordion("Delete a dataset", open=False):
        gr.Markdown("Deletes the dataset chosen in the menu above, the images no other dataset uses and the "
                    "vectors cached for it. Trained runs are kept. Refused while a job is using it.")
        with gr.Row():
            confirm = gr.Textbox(label="Type the dataset's name to confirm", scale=3, elem_id="delete-confirm")
            delete_btn = gr.Button("Delete dataset", variant="stop", scale=1, elem_id="delete-btn")
        delete_report = gr.Markdown(elem_id="delete-report")
    gr.Markdown("### Browse")
    with gr.Row():
        category = gr.Dropdown(label="Category", choices=[ALL], value=ALL, allow_custom_value=True, scale=2)
        text = gr.Textbox(label="Search title / text / topics", scale=2)
        page = gr.Number(label="Page", value=1, precision=0, scale=1)
    caption = gr.Markdown()
    gallery = gr.Gallery(label="Notes", columns=8, height=520, object_fit="contain", allow_preview=True,
                         elem_id="data-gallery")

    def on_import(n, nf, pf, iz, sb, progress=gr.Progress()):
        return import_upload(backend, n, nf, pf, iz, sb, progress)

    import_btn.click(on_import, [name, notes_file, pairs_file, images_zip, skip_bad],
                     [import_report, problems, table, dataset, report_file], api_name="import_dataset")

    def on_export(ds, k, progress=gr.Progress()):
        return export_selected(backend, ds, k, progress)

    export_btn.click(on_export, [dataset, export_k], [export_report, export_file], api_name="export_dataset")

    def on_delete(ds, typed):
        status, datasets, choice = delete_selected(backend, ds, typed)
        return status, datasets, choice, ""

    delete_btn.click(on_delete, [dataset, confirm], [delete_report, table, dataset, confirm],
                     api_name="delete_dataset")

    def on_dataset(ds):
        try:
            overview, fig, cat = stats(backend, ds)
            items, cap = browse(backend, ds, ALL, "", 1)
            return overview, fig, cat, items, cap, 1, datasets_table(backend)
        except Exception as error:
            return f"{mark('error')} {md(message(error))}", None, gr.update(), [], "", 1, gr.update()

    dataset.change(on_dataset, [dataset], [summary, cat_plot, category, gallery, caption, page, table],
                   api_name="dataset_overview")

    def on_browse(ds, c, t, p):
        try:
            return browse(backend, ds, c, t, p)
        except Exception as error:
            return [], f"{mark('error')} {md(message(error))}"

    for trigger in (category.change, text.submit, page.submit):
        trigger(on_browse, [dataset, category, text, page], [gallery, caption], api_name=False)
    category.change(lambda: 1, None, page, api_name=False)
    return {"refresh": (on_dataset, [dataset], [summary, cat_plot, category, gallery, caption, page, table])}
