"""The app's start-up makes the demo variants warm before it says ready (from shipped vectors when they fit,
encoding otherwise), and the banner says, one line per variant, "warm" or "encoding n of N"."""
import shutil

import pytest

pytest.importorskip("gradio")

from app.backend import Backend, Startup, Warmth  # noqa: E402
from app.main import banner  # noqa: E402
from app.render import md  # noqa: E402
from core.workbench import MODALITIES  # noqa: E402
from tests.unit.test_shipped_vectors import NOTES, RUN, Encodes, shipped, small_sample  # noqa: E402,F401


def backend_on(tmp_path, monkeypatch, checkpoints) -> Backend:
    """A Backend whose start-up imports the small sample (as "sample") and installs `checkpoints`."""
    monkeypatch.setenv("NOTELLM2_CHECKPOINTS", str(checkpoints))
    backend = Backend(tmp_path / "ws")
    files = small_sample(tmp_path / "files")

    def ensure_sample():
        from core.data.sample import SAMPLE_DIR

        if not backend.workbench.store.has_dataset("sample"):
            backend.workbench.store.import_dataset("sample", files / "notes.csv", files / "pairs.csv",
                                                   SAMPLE_DIR / "images")
        return "sample"

    backend.workbench.ensure_sample = ensure_sample
    return backend


def test_start_up_is_ready_with_the_shipped_variant_warm_and_nothing_encoded(shipped, tmp_path, monkeypatch):
    backend = backend_on(tmp_path, monkeypatch, shipped["dir"])
    encodes = Encodes(backend.workbench)
    backend._startup()
    s = backend.startup
    assert s.state == "ready", s.message
    assert list(s.warmth) == [RUN]
    warmth = s.warmth[RUN]
    assert (warmth.state, warmth.done, warmth.total) == ("warm", NOTES * len(MODALITIES), NOTES * len(MODALITIES))
    assert f"**{md(RUN)}**: warm" in banner(backend, "sample")
    # The first search after "ready", in every modality, with its explanations: no note is encoded.
    for modality in MODALITIES:
        hits = backend.workbench.neighbours(RUN, "sample", note_id=shipped["ids"][3], k=4, modality=modality)
        backend.workbench.explain(RUN, "sample", hits, note_id=shipped["ids"][3])
    assert encodes.calls == 0


def test_start_up_encodes_what_was_not_shipped_and_counts_it(shipped, tmp_path, monkeypatch):
    """No vectors beside the checkpoint: start-up encodes them itself (so the first search still does not),
    and while it does the variant reads "encoding n of N"."""
    bare = tmp_path / "shipped"
    shutil.copytree(shipped["dir"], bare)
    for path in (bare / "basic").glob("vectors*"):
        path.unlink()
    backend = backend_on(tmp_path, monkeypatch, bare)
    seen = []
    original = backend.workbench.encode

    def watching(name, notes, *args, **kwargs):
        w = backend.startup.warmth[name]
        seen.append((w.state, w.done, banner(backend, "sample")))
        return original(name, notes, *args, **kwargs)

    backend.workbench.encode = watching
    backend._startup()
    assert backend.startup.state == "ready", backend.startup.message
    total = NOTES * len(MODALITIES)
    assert [(state, done) for state, done, _ in seen] == [("encoding", 0), ("encoding", NOTES),
                                                          ("encoding", 2 * NOTES)]
    assert f"**{md(RUN)}**: encoding {NOTES} of {total}" in seen[1][2]
    assert backend.startup.warmth[RUN].state == "warm" and backend.startup.warmth[RUN].done == total
    encodes = Encodes(backend.workbench)
    backend.workbench.neighbours(RUN, "sample", note_id=shipped["ids"][0], k=3, modality="image")
    assert encodes.calls == 0


def test_banner_has_one_line_per_variant_in_order_on_the_start_up_dataset_only(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTELLM2_CHECKPOINTS", str(tmp_path / "none"))
    backend = Backend(tmp_path / "ws")
    backend.startup = Startup(state="ready", sample="sample", warmth={
        "demo-basic": Warmth("demo-basic", 1800, 1800, "warm"),
        "zs-text": Warmth("zs-text", 120, 1800, "encoding"),
        "zs-image": Warmth("zs-image", 0, 1800, "queued"),
        "zs-concat": Warmth("zs-concat", 0, 0, "failed", "no vision weights"),
    }, warming=True)
    lines = banner(backend, "sample").split("  \n")[1:]
    assert lines == [f"**{md('demo-basic')}**: warm", f"**{md('zs-text')}**: encoding 120 of 1800",
                     f"**{md('zs-image')}**: encoding 0 of 1800",
                     f"**{md('zs-concat')}**: not warmed ({md('no vision weights')}); it encodes on first use"]
    assert "warm" not in banner(backend, "another")  # the lines are about the sample's vectors


def test_the_page_keeps_polling_until_the_warming_is_done():
    assert not Startup(state="running").settled
    assert not Startup(state="ready", warming=True).settled  # the baselines still encoding: keep the lines live
    assert Startup(state="ready").settled and Startup(state="failed").settled


def test_background_start_up_warms_the_cheap_baselines_after_ready(shipped, tmp_path, monkeypatch):
    """start_background: ready once the shipped variant is warm, then the listed baselines' vectors too."""
    backend = backend_on(tmp_path, monkeypatch, shipped["dir"])
    order = []
    monkeypatch.setattr(backend, "_warm", lambda names, dataset: order.append((backend.startup.state, list(names))))
    backend.start_background(warm_zero_shot=("zs-text", "not-a-baseline")).join(30)
    assert order == [("running", [RUN]), ("ready", ["zs-text"])]
    assert backend.startup.settled


def test_the_start_up_poll_leaves_the_dataset_picker_alone_once_ready(tmp_path, monkeypatch):
    """While the baselines encode after "ready" the page still polls (the banner's lines move), but the dataset
    picker is not re-sent each second: that would close it under the user's pointer."""
    from app.main import startup_tick

    monkeypatch.setenv("NOTELLM2_CHECKPOINTS", str(tmp_path / "none"))
    backend = Backend(tmp_path / "ws")
    monkeypatch.setattr(backend, "dataset_names", lambda: ["sample", "mine"])
    backend.startup = Startup(state="running")
    picker, _, timer = startup_tick(backend, None)
    assert picker.get("choices") == ["sample", "mine"] and picker.get("value") == "sample" and timer.active
    backend.startup = Startup(state="ready", sample="sample", warming=True)
    picker, _, timer = startup_tick(backend, None)  # the first poll after ready fills the picker
    assert picker.get("value") == "sample"
    picker, _, timer = startup_tick(backend, "mine")
    assert "choices" not in picker and "value" not in picker and timer.active
    backend.startup.warming = False
    assert not startup_tick(backend, "mine")[2].active


def test_banner_status_lines_use_css_marks_and_escape_the_message(tmp_path, monkeypatch):
    """Emoji render as empty boxes in a browser without emoji fonts, and a start-up failure must carry the
    error mark the browser tests look for; the message may quote a file name, so it is escaped."""
    monkeypatch.setenv("NOTELLM2_CHECKPOINTS", str(tmp_path / "none"))
    backend = Backend(tmp_path / "ws")
    backend.startup = Startup(state="failed", message="bad <b>notes.csv</b>")
    failed = banner(backend, None)
    assert 'class="wb-mark error"' in failed and "<b>notes.csv</b>" not in failed
    backend.startup = Startup(state="running", message="importing <i>x</i>")
    running = banner(backend, None)
    assert 'class="wb-mark info"' in running and "<i>x</i>" not in running
    for text in (failed, running):
        assert not any(0x2300 <= ord(ch) <= 0x2BFF or ord(ch) >= 0x1F000 for ch in text), text
