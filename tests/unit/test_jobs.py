"""Background jobs: a training worker reports progress, cancel leaves a resumable checkpoint, a dead worker
is marked failed, and another process sees the same jobs."""
import json
import subprocess
import time

import pytest

from core import jobs, service
from tests.unit.engine_fixtures import import_learnable


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs") / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    return root


def wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_cancel_stops_a_training_job_and_leaves_a_resumable_checkpoint(workspace):
    job_id = service.start_training(workspace, "toy", "late", "bg", preset="tiny", steps=400, test_fraction=0.3,
                                    eval_every=0, checkpoint_every=1000)
    running = wait_for(lambda: (s := service.job_status(workspace, job_id))["step"] >= 2 and s)
    assert running["state"] == "running" and running["kind"] == "train" and running["total"] == 400
    # Re-attach: a process that did not start the worker sees it as running too.
    jobs._children.clear()
    assert service.job_status(workspace, job_id)["state"] == "running"
    assert any(job["job_id"] == job_id for job in service.list_jobs(workspace))

    service.cancel_job(workspace, job_id)
    done = jobs.wait(workspace, job_id, timeout=120)
    assert done["state"] == "cancelled", done
    run_dir = workspace / "runs" / "bg"
    step = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"]
    assert 2 <= step < 400 and done["step"] == step
    assert json.loads((run_dir / "run.json").read_text())["status"] == "cancelled"
    assert service.run_events(workspace, "bg")[-1]["event"] == "cancelled"
    assert "step" in done["log_tail"]

    resumed = service.resume_training(workspace, "bg")
    wait_for(lambda: service.job_status(workspace, resumed)["step"] > step)
    service.cancel_job(workspace, resumed)
    assert jobs.wait(workspace, resumed, timeout=120)["state"] == "cancelled"
    rows = [r for r in service.run_events(workspace, "bg") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, rows[-1]["step"] + 1))  # no gap, no repeat


def test_a_job_whose_process_is_gone_is_marked_failed(workspace):
    gone = subprocess.Popen(["true"])
    gone.wait()
    with jobs._db(service._ws(workspace)) as db:
        db["jobs"].insert({"job_id": "ghost", "kind": "train", "run": "ghost", "dataset": "toy", "state": "running",
                           "step": 3, "total": 10, "message": "", "pid": gone.pid, "pid_start": "1",
                           "log_path": "", "argv": "[]", "cancel_requested": 0, "created_at": "x", "updated_at": "x"})
    status = service.job_status(workspace, "ghost")
    assert status["state"] == "failed" and "gone" in status["message"]
    assert service.job_status(workspace, "ghost")["state"] == "failed"


def test_bad_training_request_fails_before_any_worker_starts(workspace):
    from core.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="unknown variant"):
        service.start_training(workspace, "toy", "nope", "x", preset="tiny")
    with pytest.raises(WorkbenchError, match="unknown dataset"):
        service.start_training(workspace, "missing", "text", "x", preset="tiny")
