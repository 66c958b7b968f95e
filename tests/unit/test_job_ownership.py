"""One worker per run: atomic claims, refusal of start/resume on an owned run, a cap on concurrent jobs,
claims that outlive their worker released, workers reaped, a resumed job showing its real progress."""
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from core import jobs, service
from core.errors import WorkbenchError
from core.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    return Workspace.open(tmp_path / "ws")


def set_state(ws, job_id, **changes):
    conn = sqlite3.connect(ws.db_path)
    with conn:
        for key, value in changes.items():
            conn.execute(f"update jobs set {key} = ? where job_id = ?", [value, job_id])
    conn.close()


def test_concurrent_claims_of_one_run_exactly_one_wins(ws):
    jobs.claim(ws, "train", run="warm-up", limit=100)  # the table exists before the race starts
    for round_ in range(3):
        run = f"race-{round_}"
        barrier = threading.Barrier(8)
        won, refused = [], []

        def attempt():
            barrier.wait()
            try:
                won.append(jobs.claim(ws, "train", run=run, limit=100))
            except WorkbenchError as error:
                refused.append(str(error))

        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1 and len(refused) == 7
        assert all(f"run '{run}' is in use" in message for message in refused)


def test_cap_on_concurrent_jobs(ws, monkeypatch):
    monkeypatch.setenv("NOTELLM2_MAX_JOBS", "2")
    assert jobs.max_jobs() == 2
    first = jobs.claim(ws, "train", run="a")
    jobs.claim(ws, "encode", run="zs-text")
    with pytest.raises(WorkbenchError, match=r"2 jobs are queued or running already.*NOTELLM2_MAX_JOBS"):
        jobs.claim(ws, "train", run="c")
    set_state(ws, first, state="finished")
    assert jobs.claim(ws, "train", run="c")  # a slot is free again
    monkeypatch.setenv("NOTELLM2_MAX_JOBS", "not a number")
    assert jobs.max_jobs() == jobs.DEFAULT_MAX_JOBS


def test_a_claim_whose_worker_is_gone_or_never_started_stops_holding_the_run(ws):
    never = jobs.claim(ws, "train", run="r", limit=10)
    with pytest.raises(WorkbenchError, match="in use"):
        jobs.claim(ws, "train", run="r", limit=10)
    set_state(ws, never, created_at="2000-01-01T00:00:00")  # its spawner died long ago
    dead = jobs.claim(ws, "train", run="r", limit=10)
    set_state(ws, dead, pid=2 ** 22 + 7, pid_start="1", state="running")  # a pid that is not running
    again = jobs.claim(ws, "train", run="r", limit=10)
    assert jobs.get_job(ws, never)["state"] == "failed"
    assert "never started" in jobs.get_job(ws, never)["message"]
    assert jobs.get_job(ws, dead)["state"] == "failed"
    assert str(ws.root) not in jobs.get_job(ws, dead)["message"]  # the page shows it: the log's name only
    assert jobs.get_job(ws, again)["state"] == "queued"


def fake_run(ws, run, step=10, steps=50):
    folder = ws.runs_dir / run
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"run": run, "status": "cancelled", "dataset": "toy", "step": step,
                                                 "train": {"steps": steps}}))
    return folder


def test_resume_and_start_are_refused_on_a_run_a_job_owns(ws, monkeypatch):
    monkeypatch.setenv("NOTELLM2_MAX_JOBS", "5")
    fake_run(ws, "owned")
    owner = jobs.claim(ws, "train", run="owned")
    with pytest.raises(WorkbenchError, match=f"run 'owned' is in use by train job {owner}"):
        service.resume_training(ws, "owned")
    with pytest.raises(WorkbenchError, match="in use"):
        jobs.start_job(ws, "train", ["train", "--run", "owned", "--resume"], run="owned")
    assert [j["job_id"] for j in jobs.list_jobs(ws)] == [owner]  # nothing else was queued


def test_a_resumed_job_shows_its_real_step_and_total_and_its_worker_is_reaped(ws):
    fake_run(ws, "half", step=10, steps=50)
    job_id = service.resume_training(ws, "half")
    first = jobs.get_job(ws, job_id)
    assert (first["step"], first["total"]) == (10, 50)
    done = jobs.wait(ws, job_id, timeout=120)  # the fake run has no checkpoint: the worker fails
    assert done["state"] == "failed", done
    assert (done["step"], done["total"]) == (10, 50)  # what the worker reported, not --steps' default of 100
    assert "step 0 / 100" not in done["message"]


def test_finished_workers_do_not_stay_zombies(ws):
    # A worker that exits at once (argparse refuses the unknown --job flag of `datasets`); nobody reads
    # the job, so only the waiter thread can collect its exit status.
    job_id = jobs.start_job(ws, "encode", ["datasets"], run="zs-text")
    with sqlite3.connect(ws.db_path) as conn:
        pid = conn.execute("select pid from jobs where job_id = ?", [job_id]).fetchone()[0]
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), Path(f"/proc/{pid}/stat").read_text()


def test_override_values_that_look_like_flags_stay_values():
    """A worker gets its request as one JSON spec: values keep their types, and none is read as a flag."""
    from core.cli import build_parser

    overrides = {"vision": "--resume", "llm": "-h", "lr_llm": 0.001, "learn_temperature": False}
    spec = service.training_spec("toy", "text", "r", "tiny", 5, overrides)
    args = build_parser().parse_args(["train", "--run", "r", "--spec", spec])
    assert not args.resume and args.vision is None and args.llm is None
    assert json.loads(args.spec) == {"dataset": "toy", "variant": "text", "run": "r", "preset": "tiny", "steps": 5,
                                     "overrides": overrides}
