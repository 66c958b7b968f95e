"""Names that arrive in requests never become paths: the variant resolver, run and dataset name patterns,
and the service functions that turn a variant name into a folder."""
import os

import pytest

from core import service
from core.baselines import ZERO_SHOT
from core.errors import WorkbenchError
from core.workspace import ZERO_SHOT_NAMES, Workspace, check_dataset_name, check_run_name

HOSTILE = ["evil\n", "-h", "--resume", "../x", "..", ".", "/etc", "/", "a/b", "a\\b", "", " ", ".hidden",
           "runs/../x", "x\x00y", "zs-text/../..", "~", "é"]


@pytest.fixture
def ws(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    (ws.runs_dir / "my-run").mkdir()
    (ws.runs_dir / "micl+late").mkdir()
    return ws


def test_zero_shot_names_agree_with_the_baselines():
    assert tuple(ZERO_SHOT_NAMES) == tuple(ZERO_SHOT)


def test_resolver_accepts_zero_shot_names_and_existing_runs(ws):
    for name in ZERO_SHOT_NAMES:
        assert ws.resolve_variant(name) == name
    assert ws.resolve_variant("my-run") == ws.runs_dir / "my-run"
    assert ws.resolve_variant("micl+late") == ws.runs_dir / "micl+late"


@pytest.mark.parametrize("name", HOSTILE + ["nope", "zs-nothing", None, 3])
def test_resolver_refuses_paths_and_unknown_names_without_revealing_paths(ws, name):
    with pytest.raises(WorkbenchError) as caught:
        ws.resolve_variant(name)
    message = str(caught.value)
    assert str(ws.root) not in message and "\n" not in message


def test_resolver_refuses_an_existing_folder_outside_runs_and_a_link_out_of_runs(ws, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.root / "sibling").mkdir()
    os.symlink(outside, ws.runs_dir / "linked")
    for name in (str(outside), "../sibling", "../images", "../../outside", "linked"):
        with pytest.raises(WorkbenchError):
            ws.resolve_variant(name)
    (ws.runs_dir / "a-file").write_text("not a run")
    with pytest.raises(WorkbenchError, match="no such run"):
        ws.resolve_variant("a-file")


@pytest.mark.parametrize("name", HOSTILE)
def test_run_names_must_be_plain(name):
    with pytest.raises(WorkbenchError):
        check_run_name(name)


@pytest.mark.parametrize("name", HOSTILE)
def test_dataset_names_must_be_plain(name):
    with pytest.raises(WorkbenchError):
        check_dataset_name(name)


def test_plain_names_pass():
    for name in ("a", "9lives", "micl+late", "repro-sample-micl_late-tiny-4s-seed0", "x" * 200):
        assert check_run_name(name) == name
    assert check_dataset_name("my.notes_v2-1") == "my.notes_v2-1"
    with pytest.raises(WorkbenchError):
        check_run_name("x" * 201)
    with pytest.raises(WorkbenchError, match="zero-shot"):
        check_run_name("zs-mine")


def test_run_dir_refuses_what_the_resolver_refuses(ws):
    assert ws.run_dir("new-run") == ws.runs_dir / "new-run"  # need not exist: the trainer creates it
    for name in ("../x", "/etc", "-h", "evil\n"):
        with pytest.raises(WorkbenchError):
            ws.run_dir(name)


def test_service_entry_points_refuse_path_like_variants(ws, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"not weights")
    (target / "run.json").write_text('{"run": "x"}')
    rel = os.path.relpath(target, ws.runs_dir)
    for name in (str(target), rel, "../" * 8 + str(target).lstrip("/"), "/etc"):
        for call in (lambda: service.encoder_fingerprint(ws, name), lambda: service.run_info(ws, name),
                     lambda: service.load_encoder(ws, name), lambda: service.run_events(ws, name),
                     lambda: service.resume_training(ws, name),
                     lambda: service.evaluate_variant(ws, name, "sample"),
                     lambda: service.note_vectors(ws, name, "sample", [])):
            with pytest.raises(WorkbenchError) as caught:
                call()
            assert str(tmp_path) not in str(caught.value)
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors", "run.json"]  # nothing written there


@pytest.mark.parametrize("run", ["-h", "--resume", "evil\n", "../x", "/tmp/x"])
def test_start_training_refuses_bad_run_names_before_anything(ws, run):
    with pytest.raises(WorkbenchError, match="bad run name"):
        service.start_training(ws, "sample", "text", run, preset="tiny", steps=1)
    assert not (ws.root / "jobs").exists()
