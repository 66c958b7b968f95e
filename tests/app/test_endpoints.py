"""Every tab's endpoints through gradio_client against a launched app (sample dataset, tiny runs)."""
from __future__ import annotations

import html
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path


import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

try:
    from workbench_server import launch
except ImportError:  # tests/ imported as a package
    from tests.app.workbench_server import launch

from app.tabs.search import COMPOSE, FROM_DATASET  # noqa: E402
from app.render import mark  # noqa: E402
from core.workbench import JobState  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLE_IMAGE = next((REPO / "data" / "sample" / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    launched = launch(tmp_path_factory.mktemp("workspace"))
    yield launched
    launched.demo.close()


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def query(app):
    """A sample note with at least one related note."""
    store = app.backend.store
    a, _ = store.pairs("sample")[0]
    return store.note("sample", a)


def cards(html: str) -> int:
    return html.count('class="wb-card')


def search(client, run, note_id="", source=FROM_DATASET, title="", content="", topics="", image=None,
           modality="both", k=5):
    return client.predict("sample", source, note_id, title, content, topics, image, run, modality, k,
                          api_name="/search")


def test_search_a_dataset_note(client, app, query):
    query_html, results, summary = search(client, app.runs[0], query.note_id)
    assert query.title.split()[0] in query_html
    assert cards(results) == 5
    assert "Known related notes found" in summary and "of" in summary
    assert query.note_id not in re.findall(r'data-note-id="([^"]+)"', results)  # the query is not its own neighbour


@pytest.mark.parametrize("modality", ["text", "image"])
def test_search_modality_switch(client, app, query, modality):
    _, results, summary = search(client, app.runs[0], query.note_id, modality=modality)
    assert cards(results) == 5
    assert "only" in summary


def test_search_composed_note_with_image(client, app):
    query_html, results, _ = search(client, app.runs[0], source=COMPOSE, title="a red bird", content="on a branch",
                                    image=handle_file(str(SAMPLE_IMAGE)))
    assert "Composed query" in query_html
    assert cards(results) == 5


def test_empty_query_is_a_message_not_a_crash(client, app):
    _, results, _ = search(client, app.runs[0], source=COMPOSE)
    assert "query is empty" in results
    _, results, _ = search(client, app.runs[0], "no-such-note")
    assert "wb-notice" in results and "no-such-note" in results
    # the server still answers
    assert cards(search(client, app.runs[0], app.backend.store.pairs("sample")[0][0])[1]) == 5


def test_compare_two_variants(client, app, query):
    query_html, side, overlap, summary = client.predict("sample", query.note_id, app.runs, "both", 6,
                                                        api_name="/compare")
    assert side.count('class="wb-col"') == 2
    assert cards(side) == 12
    assert overlap["data"], "pairwise overlap table is empty"
    assert "first column" in summary


def test_compare_needs_two_variants(client, app, query):
    _, side, _, _ = client.predict("sample", query.note_id, app.runs[:1], "both", 6, api_name="/compare")
    assert "two to four" in side


def test_recall_table(client, app):
    table, note = client.predict("sample", app.runs, "all", api_name="/recall_table")
    assert len(table["data"]) == 2 * 3, table  # two runs x three modalities
    assert "R@10" in table["headers"]
    assert "[" in table["data"][0][table["headers"].index("R@10")]  # the interval is shown
    assert "Recall@k" in note


def test_explore_map_and_selection(client, app, query):
    fig, status = client.predict("sample", app.runs, "both", "category", api_name="/explore_map")
    assert "600 notes" in status and "⚠" not in status, status
    assert fig is not None
    # every point carries [note id, image URL]; the URL serves the note's image and nothing outside the
    # workspace's image folder is served
    figure = json.loads(fig["plot"]) if isinstance(fig, dict) and "plot" in fig else fig
    points = [point for trace in figure["data"] for point in trace.get("customdata") or []]
    assert len(points) == 600 * len(app.runs)  # one map per variant
    note_id, url = points[0]
    note = app.backend.store.note("sample", note_id)
    assert url.startswith("gradio_api/file=") and Path(note.image).name in url
    served = urllib.request.urlopen(app.url + url, timeout=30).read()
    assert served == Path(note.image).read_bytes()
    outside = app.url + "gradio_api/file=" + urllib.parse.quote(str(REPO / "README.md"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(outside, timeout=30)
    assert refused.value.code in (403, 404)
    # the map lives in the session's state: selecting a note reuses it and lists each variant's neighbours
    fig, neighbours = client.predict("target hit", query.note_id, api_name="/explore_select")
    assert neighbours.count('class="wb-col"') == 2 and cards(neighbours) > 0, neighbours[:500]


def test_attention_tools(client, app, query):
    fig, text = client.predict("sample", ["tiny-micl-late"], 1, api_name="/saliency")
    assert "S_v" in text and "⚠" not in text, text
    overlay, layers, text = client.predict("sample", "tiny-micl-late", query.note_id, api_name="/attention_map")
    assert "⚠" not in text, text
    fig, text = client.predict("sample", "tiny-micl-late", query.note_id, 40, api_name="/gate_shares")
    assert "LLM share" in text and "Selected note" in text, text
    fig, text = client.predict("sample", "tiny-basic", query.note_id, 40, api_name="/gate_shares")
    assert "no late-fusion gate" in text


def test_import_refuses_bad_files_and_changes_nothing(client, app, tmp_path):
    before = app.backend.dataset_names()
    broken = tmp_path / "images.zip"
    broken.write_bytes(b"this is not a zip")
    notes = tmp_path / "notes.csv"
    notes.write_text("note_id,title,content,image\nn1,First,hello,a.jpg\nn2,Second,world,\n")
    report, problems, datasets, _, report_file = client.predict("bad", handle_file(str(notes)), None,
                                                                handle_file(str(broken)), False,
                                                                api_name="/import_dataset")
    assert "not a readable zip" in report
    wrong_type = tmp_path / "notes.txt"
    wrong_type.write_text("hello")
    with pytest.raises(Exception, match="Invalid file type"):  # Gradio's own check, shown as an error toast
        client.predict("bad", handle_file(str(wrong_type)), None, None, False, api_name="/import_dataset")
    missing = tmp_path / "missing.csv"
    missing.write_text("note_id,title\nn1,First\n")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("note_id_1,note_id_2\nn1,nope\n")
    report, problems, *_ = client.predict("bad", handle_file(str(missing)), handle_file(str(pairs)), None, False,
                                          api_name="/import_dataset")
    assert "Nothing imported" in report
    assert app.backend.dataset_names() == before


def test_import_good_upload(client, app, tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text("note_id,title,content,image,category\nn1,First,hello,a.jpg,x\nn2,Second,world,,y\n")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("note_id_1,note_id_2\nn1,n2\n")
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(SAMPLE_IMAGE, "a.jpg")
    report, problems, datasets, dataset, report_file = client.predict(
        "mini", handle_file(str(notes)), handle_file(str(pairs)), handle_file(str(archive)), False,
        api_name="/import_dataset")
    assert mark("ok") in report and "2 of 2 notes" in report, report  # the success mark, not an error's
    assert report_file is None  # nothing was left out
    assert "mini" in app.backend.dataset_names()
    summary, *_ = client.predict("mini", api_name="/dataset_overview")
    assert "2 notes" in summary


def test_delete_dataset_needs_the_typed_name(client, app, tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text("note_id,title,content,image\nd1,Doomed,first,\nd2,Doomed too,second,\n")
    app.backend.store.import_dataset("to-delete", notes)
    report, datasets, choice, typed = client.predict("to-delete", "to-delet", api_name="/delete_dataset")
    report = html.unescape(report)
    assert "type the dataset name 'to-delete' to confirm" in report and "nothing was deleted" in report
    assert "to-delete" in app.backend.dataset_names()
    report, datasets, choice, typed = client.predict("to-delete", "to-delete", api_name="/delete_dataset")
    assert "Deleted **to-delete**" in report and typed == ""
    assert "to-delete" not in app.backend.dataset_names()
    listed = [row[0] for row in datasets["data"]]
    assert "to-delete" not in listed and "sample" in listed and choice["value"] == "sample"


def test_finetune_start_stop_resume(client, app):
    out = client.predict("sample", "mICL", True, "tiny", 400, "ui-tiny", None, None, None, "", "", "preset",
                         api_name="/start_training")
    job_id = out[0]
    assert job_id and any("ui-tiny" in str(x) and "queued" in str(x) for x in out[1:]), out
    status = app.backend.workbench.job(job_id)
    deadline = time.time() + 90
    while time.time() < deadline and not (status.state is JobState.RUNNING and status.step > 0):
        time.sleep(0.5)
        status = app.backend.workbench.job(job_id)
    view = client.predict(job_id, api_name="/job_view")
    assert "ui-tiny" in view[0] and status.state.value in view[0]
    client.predict(job_id, api_name="/stop_training")
    deadline = time.time() + 60
    while time.time() < deadline and status.active:
        time.sleep(0.5)
        status = app.backend.workbench.job(job_id)
    assert status.state in (JobState.CANCELLED, JobState.FINISHED), status
    view = client.predict(job_id, api_name="/job_view")
    assert status.state.value in view[0]
    if status.state is JobState.CANCELLED:  # a stopped run resumes from its checkpoint as a new job
        new_job, = [client.predict(job_id, api_name="/resume_training")]
        new_job = new_job[0] if isinstance(new_job, (list, tuple)) else new_job
        assert new_job and new_job != job_id
        app.backend.workbench.cancel_job(new_job)
