"""The Runs tab's table and diff, and the Fine-tune tab's state helpers, on a workspace of hand-made runs."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.tabs import finetune, runs
from core.workbench import Job, JobState, TrainingRequest, Workbench
from tests.unit.test_run_management import make_run


@pytest.fixture
def backend(tmp_path):
    bench = Workbench(tmp_path / "ws")
    make_run(bench, "a-run")
    make_run(bench, "b-run", dataset="other")
    info = bench.runs.read("b-run")
    info["train"]["lr_new"] = 1e-3
    info["variant"] = "<b>basic</b>"
    bench.runs.write("b-run", info)
    return SimpleNamespace(workbench=bench)


def test_the_table_has_every_run_with_its_last_evaluation_and_image_path(backend):
    table = runs.runs_table(backend.workbench.run_summaries())
    assert set(table["run"]) == {"a-run", "b-run"}
    row = table[table["run"] == "a-run"].iloc[0]
    assert row["R@10 (held-out)"] == "0.400" and row["at step"] == "3" and row["n_v R@10"] == "0.100"
    assert row["chance loss"] == "3.400" and row["wall time"] == "12 s" and row["steps"] == "3 / 3"


def test_the_diff_shows_only_differing_settings_escaped(backend):
    html = runs.config_diff(backend, ["a-run", "b-run"])
    assert "train.lr_new" in html and "dataset" in html and "variant" in html
    assert "created_at" not in html and "train.run" not in html and "model.llm" not in html
    assert "<b>basic</b>" not in html and "&lt;b&gt;basic&lt;/b&gt;" in html
    assert "Select two runs" in runs.config_diff(backend, ["a-run"])


def test_the_overlay_draws_one_colour_per_run(backend):
    fig = runs.overlay(backend, ["a-run", "b-run"])
    assert {t.name for t in fig.data} == {"a-run", "b-run"}
    assert sum(1 for t in fig.data if t.showlegend) == 2


def test_the_form_gets_the_running_jobs_settings_back():
    request = TrainingRequest(run="r", dataset="sample", variant="basic+late", preset="tiny", steps=40,
                              overrides={"lr_new": 1e-4, "llm_tuning": "full"})
    assert finetune.form_of(request) == ("basic", True, "tiny", 40, "r", None, None, 1e-4, "", "", "full")
    assert finetune.form_of(TrainingRequest("r", "s", "late", "cpu", 5))[:2] == ("none", True)
    assert finetune.form_of(TrainingRequest("r", "s", "micl", "cpu", 5))[:2] == ("mICL", False)


def test_a_requests_overrides_are_what_differs_from_the_preset(backend):
    info = backend.workbench.runs.read("a-run")
    info.update(preset="tiny", variant="micl", train={**info["train"], "lr_new": 0.5}, model={"llm_tuning": "x"})
    backend.workbench.runs.write("a-run", info)
    request = backend.workbench.training_request("a-run")
    assert request.dataset == "sample" and request.steps == 3
    assert dict(request.overrides) == {"lr_new": 0.5, "llm_tuning": "x"}


def job(state, dataset="sample", run="r"):
    return Job(job_id="j1", kind="train", run=run, dataset=dataset, state=state, step=3, total=3, message="",
               created_at="", updated_at="")


def test_the_dataset_note_says_which_dataset_and_escapes_it():
    assert "**sample**" in finetune.dataset_note("sample")
    note = finetune.dataset_note("x_[y](z)", job(JobState.RUNNING, dataset="<b>o</b>"))
    assert "[y](z)" not in note and "<b>" not in note and "trains on" in note
    assert "dataset sample" in finetune.progress_html(job(JobState.RUNNING))


def test_a_job_that_ends_signals_the_page_once(backend, monkeypatch):
    states = iter([JobState.FINISHED, JobState.FINISHED])
    fake = SimpleNamespace(workbench=SimpleNamespace(job=lambda j: job(next(states), run="a-run"),
                                                     run_events=backend.workbench.run_events,
                                                     runs=backend.workbench.runs))
    monkeypatch.setattr(finetune, "info_toast", lambda *a, **k: None)
    first = finetune.poll(fake, "j1", "running", "sample")
    assert isinstance(first[-1], str) and first[-1].startswith("j1:finished")
    second = finetune.poll(fake, "j1", "finished", "sample")
    assert not isinstance(second[-1], str)  # no new signal: the page refreshed once already


def test_start_trains_on_the_dataset_of_the_form(monkeypatch):
    calls = []
    fake = SimpleNamespace(workbench=SimpleNamespace(
        start_training=lambda dataset, variant, run, **kw: calls.append((dataset, variant, run, kw)) or "j"))
    monkeypatch.setattr(finetune, "info_toast", lambda *a, **k: None)
    finetune.start(fake, "other-data", "basic", False, "tiny", 4, "r1", None, None, None, "", "", "preset")
    assert calls == [("other-data", "basic", "r1", {"preset": "tiny", "steps": 4})]
