"""The launched app against hostile and careless requests (gradio_client and raw HTTP): variant names that
are paths, HTML and Markdown in notices, decompression bombs, oversized uploads, huge validation reports,
Host headers of other sites, logins."""
from __future__ import annotations

import csv
import html
import http.client
import os
import uuid
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

try:
    from workbench_server import free_port
except ImportError:  # tests/ imported as a package
    from tests.app.workbench_server import free_port

from app.tabs.search import COMPOSE, FROM_DATASET  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from app.backend import Backend
    from launch import serve

    root = tmp_path_factory.mktemp("security") / "ws"
    backend = Backend(root)
    backend._startup()
    assert backend.startup.state == "ready", backend.startup.message
    port = free_port()
    demo, backend = serve(root, port=port, block=False, backend=backend, max_upload_mb=1)
    yield {"url": f"http://127.0.0.1:{port}/", "port": port, "backend": backend, "demo": demo, "root": root}
    demo.close()


@pytest.fixture(scope="module")
def client(app):
    return Client(app["url"], verbose=False)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A folder outside the workspace that looks like a run: a path-like variant must never reach it."""
    folder = tmp_path_factory.mktemp("elsewhere") / "fake-run"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"not weights")
    (folder / "run.json").write_text('{"run": "fake-run", "status": "finished"}')
    (folder / "config.json").write_text("{}")
    return folder


def hostile_names(app, target) -> list[str]:
    runs = app["root"] / "runs"
    return [str(target), os.path.relpath(target, runs), "../" * 12 + str(target).lstrip("/"), "/etc", "../..",
            "zs-text/../../x", "evil\n", "-h"]


def untouched(target) -> bool:
    return sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "run.json"]


def no_path_in(text, app, target) -> bool:
    """The workspace's location is never revealed (a refused name is quoted back: the asker typed it)."""
    text = html.unescape(str(text))
    return str(app["root"]) not in text and str(app["root"].parent) not in text


def first_note(app) -> str:
    return app["backend"].store.notes("sample")[0].note_id


def test_search_refuses_path_like_variants(client, app, target):
    for name in hostile_names(app, target):
        query, results, summary = client.predict("sample", FROM_DATASET, first_note(app), "", "", "", None, name,
                                                 "both", 5, api_name="/search")
        assert "wb-notice error" in results and "unknown run or baseline" in html.unescape(results), results
        assert no_path_in(results + summary, app, target)
    assert untouched(target)


def test_compare_recall_table_and_map_refuse_path_like_variants(client, app, target):
    for name in hostile_names(app, target):
        _, side, _, summary = client.predict("sample", first_note(app), ["zs-text", name], "both", 5,
                                             api_name="/compare")
        assert "unknown run or baseline" in html.unescape(side) and no_path_in(side + summary, app, target)
        table, note = client.predict("sample", [name], "all", api_name="/recall_table")
        assert "unknown run or baseline" in note and no_path_in(note, app, target), note
        *_, status = client.predict("sample", [name], "both", "category", api_name="/explore_map")
        assert "unknown run or baseline" in status and no_path_in(status, app, target), status
    assert untouched(target)


def test_attention_endpoints_refuse_path_like_variants(client, app, target):
    for name in hostile_names(app, target):
        *_, text = client.predict("sample", [name], 1, api_name="/saliency")
        assert "unknown run or baseline" in text and no_path_in(text, app, target), text
        *_, text = client.predict("sample", name, first_note(app), api_name="/attention_map")
        assert "unknown run or baseline" in text and no_path_in(text, app, target), text
        *_, text = client.predict("sample", name, first_note(app), 20, api_name="/gate_shares")
        assert "⚠" in text or "no late-fusion gate" in text
        assert no_path_in(text, app, target), text
    assert untouched(target)
    indexes = app["root"] / "indexes"
    cached = {p.relative_to(indexes).parts[0] for p in indexes.glob("**/*.npy")}
    assert cached <= {"zs-text"}  # the legitimate variant of the compare test; nothing under a hostile name


@pytest.mark.parametrize("run", ["../escape", "/tmp/abs-run", "-h", "--resume", "evil\nname", "<b>x</b>"])
def test_start_training_refuses_path_like_and_flag_like_run_names(client, app, run):
    outputs = client.predict("sample", "none", False, "tiny", 1, run, None, None, None, "", "", "preset",
                             api_name="/start_training")
    progress = next(o for o in outputs if isinstance(o, str) and "wb-notice" in o)
    assert "bad run name" in html.unescape(progress), progress
    assert "<b>x</b>" not in progress
    assert not Path("/tmp/abs-run").exists() and not (app["root"] / "escape").exists()
    assert app["backend"].workbench.jobs() == []


def test_notices_escape_html_and_markdown(client, app, tmp_path):
    _, results, _ = client.predict("sample", FROM_DATASET, first_note(app), "", "", "", None,
                                   '<a href="http://evil.example">x</a>', "both", 5, api_name="/search")
    assert "<a href" not in results and "&lt;a href" in results
    notes = tmp_path / "notes.csv"
    notes.write_text('note_id,title,"<img src=x onerror=alert(1)>","[click](http://evil.example)"\nn1,t,c,d\n')
    report, *_ = client.predict("hostile", handle_file(str(notes)), None, None, False, api_name="/import_dataset")
    assert "Nothing imported" in report
    assert "<img" not in report and "](http://" not in report and "http://evil" not in report, report


def test_a_decompression_bomb_in_the_composed_query_is_refused(client, app, tmp_path):
    from tests.unit.test_image_limits import real_bomb_png

    before = peak_rss_mb()
    # 25 Mpx: Pillow only warns when opening it, so Gradio hands over the file and core's capped opener
    # refuses it with a sentence.
    bomb = real_bomb_png(tmp_path / "bomb.png", side=5_000)
    _, results, _ = client.predict("sample", COMPOSE, "", "a title", "", "", handle_file(str(bomb)), "zs-text",
                                   "both", 5, api_name="/search")
    assert "wb-notice error" in results and "cannot be used" in html.unescape(results), results
    assert "decompression bomb" in results
    # 169 Mpx: over twice the global cap, so Gradio's own opening of the upload refuses it, from the header.
    bigger = real_bomb_png(tmp_path / "bigger.png", side=13_000)
    with pytest.raises(Exception):
        client.predict("sample", COMPOSE, "", "a title", "", "", handle_file(str(bigger)), "zs-text", "both", 5,
                       api_name="/search")
    assert peak_rss_mb() - before < 200  # decoding either would take 0.5-1.5 GB


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_uploads_over_the_size_limit_are_refused(client, app, tmp_path):
    big = tmp_path / "big.csv"
    big.write_text("note_id,title,content,image\n" + "n,t,c,\n" * 300_000)  # about 2 MB, over the 1 MB cap
    with pytest.raises(Exception, match="(?i)size|large|exceed"):
        client.predict("big", handle_file(str(big)), None, None, False, api_name="/import_dataset")
    assert "big" not in app["backend"].dataset_names()
    assert app["demo"]._queue.max_size is not None


def test_a_huge_validation_report_is_truncated_and_downloadable(client, app, tmp_path):
    from gradio.utils import get_upload_folder

    notes = tmp_path / f"notes-{uuid.uuid4().hex[:8]}.csv"
    rows = [["good", "a title", "text", ""]] + [[f"n{i}", "", "", ""] for i in range(1_500)]  # empty notes
    with open(notes, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["note_id", "title", "content", "image"])
        writer.writerows(rows)
    report, problems, _, _, report_file = client.predict("many-bad", handle_file(str(notes)), None, None, False,
                                                          api_name="/import_dataset")
    assert "first 1,000 of 1,500 problems" in report and "500 more" in report, report
    assert len(problems["data"]) == 1_000
    with open(report_file, newline="", encoding="utf-8") as f:
        assert sum(1 for _ in csv.reader(f)) == 1 + 1_500
    leftovers = [p for p in Path(get_upload_folder()).rglob(notes.name)]
    assert leftovers == []  # the upload was deleted once read


def raw_get(port: int, host: str, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", host)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_requests_naming_another_host_are_refused(app):
    port = app["port"]
    assert raw_get(port, f"127.0.0.1:{port}", "/config")[0] == 200
    assert raw_get(port, f"localhost:{port}", "/config")[0] == 200
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
        status, body = raw_get(port, host, "/config")
        assert status == 400 and b"Invalid host header" in body, (host, status)
        assert raw_get(port, host, "/gradio_api/info")[0] == 400


def test_a_login_protects_a_served_app(app):
    from launch import serve

    port = free_port()
    demo, _ = serve(app["root"], port=port, block=False, backend=app["backend"], auth={"ann": "right"})
    try:
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(Exception):
            Client(url, verbose=False)
        with pytest.raises(Exception):
            Client(url, auth=("ann", "wrong"), verbose=False)
        assert raw_get(port, f"127.0.0.1:{port}", "/config")[0] == 401
        assert Client(url, auth=("ann", "right"), verbose=False).view_api(return_format="dict")
    finally:
        demo.close()
