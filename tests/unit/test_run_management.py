"""Renaming and deleting runs: names are hostile input, a held run is left alone, caches go with the run."""
from __future__ import annotations

import json

import pytest

from core import jobs
from core.errors import WorkbenchError
from core.runs import SHIPPED_MARKER, RunRecord, summarize
from core.workbench import Workbench

HOSTILE = ["../x", "/abs", "a/b", "..", "x" * 300, "", " ", "-h", "--resume", ".hidden", "a\nb", "zs-text",
           "a\\b", "runs/../x"]


def make_run(workbench: Workbench, run: str, dataset: str = "sample", status: str = "finished") -> None:
    folder = workbench.runs.folder(run)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    info = {"run": run, "dataset": dataset, "variant": "micl+late", "preset": "tiny", "status": status, "step": 3,
            "train": {"run": run, "steps": 3, "lr_new": 1e-4}, "model": {"llm": "tiny"},
            "created_at": "2026-11-29T10:00:00", "updated_at": "2026-11-29T10:00:05"}
    (folder / "run.json").write_text(json.dumps(info))
    events = [{"time": 100.0, "step": 0, "event": "eval", "recall@10": 0.2},
              {"time": 101.0, "step": 1, "loss": 3.0},
              {"time": 112.5, "step": 3, "event": "eval", "recall@10": 0.4,
               "image_path": {"zs_image_r10": 0.3, "nv_r10": 0.1, "connector_probe_r10": 0.2,
                              "connector_variation": 0.5, "visual_loss": 3.1, "chance_loss": 3.4}}]
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def make_caches(workbench: Workbench, run: str, dataset: str = "sample") -> list:
    vectors = workbench.workspace.indexes_dir / run / dataset
    vectors.mkdir(parents=True)
    (vectors / "both.npy").write_bytes(b"v")
    maps = workbench.workspace.indexes_dir / "_maps" / dataset
    maps.mkdir(parents=True, exist_ok=True)
    own = maps / f"{dataset}-{run}-both-0123456789abcdef.npy"
    aligned = maps / f"{dataset}-zs-text-{run}-both-b-0123456789abcdef.npy"
    other = maps / f"{dataset}-zs-text-both-0123456789abcdef.npy"
    for path in (own, aligned, other):
        path.write_bytes(b"m")
    return [vectors, own, aligned, other]


@pytest.fixture
def workbench(tmp_path):
    bench = Workbench(tmp_path / "ws")
    make_run(bench, "keep")
    make_run(bench, "other")
    return bench


def outside_untouched(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("name", HOSTILE)
def test_rename_refuses_hostile_new_names(workbench, tmp_path, name):
    (tmp_path / "x").mkdir()
    before = sorted(p.name for p in workbench.workspace.runs_dir.iterdir())
    with pytest.raises(WorkbenchError):
        workbench.rename_run("keep", name)
    assert sorted(p.name for p in workbench.workspace.runs_dir.iterdir()) == before
    assert workbench.run("keep").run == "keep"
    assert outside_untouched(tmp_path) == ["ws", "x"]
    assert not list((tmp_path / "x").iterdir())


@pytest.mark.parametrize("name", HOSTILE)
def test_delete_and_rename_refuse_hostile_run_names(workbench, tmp_path, name):
    target = tmp_path / "x"
    target.mkdir()
    (target / "run.json").write_text("{}")
    with pytest.raises(WorkbenchError):
        workbench.delete_run(name)
    with pytest.raises(WorkbenchError):
        workbench.rename_run(name, "fresh")
    assert (target / "run.json").exists()
    assert not workbench.runs.folder("fresh").exists()


def test_a_link_under_runs_is_not_a_run(workbench, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "run.json").write_text(json.dumps({"run": "linked"}))
    (workbench.workspace.runs_dir / "linked").symlink_to(outside)
    with pytest.raises(WorkbenchError):
        workbench.delete_run("linked")
    assert (outside / "run.json").exists()


def test_rename_refuses_a_name_in_use(workbench):
    with pytest.raises(WorkbenchError, match="exists already"):
        workbench.rename_run("keep", "other")
    workbench.runs.folder("half-made").mkdir()  # a folder without run.json (a run that failed at start)
    with pytest.raises(WorkbenchError, match="exists already"):
        workbench.rename_run("keep", "half-made")
    with pytest.raises(WorkbenchError, match="has that name already"):
        workbench.rename_run("keep", "keep")
    assert workbench.run("keep").run == "keep" and workbench.run("other").run == "other"


def test_a_run_held_by_a_job_is_neither_deleted_nor_renamed(workbench):
    jobs.claim(workbench.workspace, "train", run="keep", dataset="sample")  # a queued training job
    with pytest.raises(WorkbenchError, match="in use"):
        workbench.delete_run("keep")
    with pytest.raises(WorkbenchError, match="in use"):
        workbench.rename_run("keep", "renamed")
    assert workbench.runs.exists("keep") and not workbench.runs.folder("renamed").exists()
    # nor may a run take the name a queued job is about to create
    jobs.claim(workbench.workspace, "train", run="queued-new", dataset="sample")
    with pytest.raises(WorkbenchError, match="in use"):
        workbench.rename_run("other", "queued-new")
    assert workbench.runs.exists("other") and not workbench.runs.folder("queued-new").exists()
    summaries = {s.run: s for s in workbench.run_summaries()}
    assert summaries["keep"].busy and summaries["keep"].status == "queued"
    assert not summaries["other"].busy


def test_shipped_demo_runs_are_kept(workbench):
    (workbench.runs.folder("keep") / SHIPPED_MARKER).write_text("{}")
    assert workbench.run("keep").shipped
    with pytest.raises(WorkbenchError, match="shipped"):
        workbench.delete_run("keep")
    with pytest.raises(WorkbenchError, match="shipped"):
        workbench.rename_run("keep", "mine")
    assert workbench.runs.exists("keep")


def test_delete_needs_the_name_typed_when_asked(workbench):
    with pytest.raises(WorkbenchError, match="confirm"):
        workbench.delete_run("keep", confirm="other")
    assert workbench.runs.exists("keep")


def test_delete_removes_the_run_and_what_was_built_from_it(workbench):
    vectors, own, aligned, other = make_caches(workbench, "keep")
    workbench.delete_run("keep", confirm="keep")
    assert not workbench.runs.folder("keep").exists()
    assert not vectors.exists() and not own.exists() and not aligned.exists()
    assert other.exists()
    assert [r.run for r in workbench.runs.all_runs()] == ["other"]
    assert not [p for p in workbench.workspace.runs_dir.iterdir() if p.name.startswith(".")]
    assert {j.kind: j.state.value for j in workbench.jobs()} == {"delete": "finished"}


def test_rename_moves_the_run_and_a_resume_reads_the_new_folder(workbench):
    vectors, own, *_ = make_caches(workbench, "keep")
    record = workbench.rename_run("keep", "  kept-renamed+1 ")
    assert record.run == "kept-renamed+1"
    info = json.loads((workbench.runs.folder("kept-renamed+1") / "run.json").read_text())
    assert info["run"] == info["train"]["run"] == "kept-renamed+1" and info["renamed_from"] == "keep"
    assert not workbench.runs.folder("keep").exists()
    assert not vectors.exists() and not own.exists()  # keyed by the old name: rebuilt under the new one
    assert (workbench.runs.folder("kept-renamed+1") / "model.safetensors").read_bytes() == b"weights"


def test_summary_reads_the_last_evaluation_and_the_image_path():
    record = RunRecord.from_info({"run": "r", "status": "running", "created_at": "2026-11-29T10:00:00",
                                  "updated_at": "2026-11-29T10:00:05"}, True)
    events = [{"time": 10.0, "step": 0, "event": "eval", "recall@10": 0.1},
              {"time": 20.0, "step": 5, "event": "eval", "recall@10": 0.3,
               "image_path": {"nv_r10": 0.2, "chance_loss": 3.4, "other": "x"}},
              {"time": 25.0, "step": 6, "loss": 1.0}]
    summary = summarize(record, events)
    assert summary.recall10 == 0.3 and summary.eval_step == 5 and summary.wall_s == 15.0
    assert dict(summary.image_path) == {"nv_r10": 0.2, "chance_loss": 3.4}
    assert summary.status == "interrupted"  # says running, no job holds it
    assert summarize(record, events, "job-1", "running").status == "running"
    assert summarize(record, []).wall_s == 5.0
