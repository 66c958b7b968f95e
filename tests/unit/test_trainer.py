"""Training on a tiny model: it learns, it resumes after kill -9 on the same schedule, it stops on NaN,
and bad requests end with one line and a non-zero exit."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core.cli import main as cli
from core.errors import WorkbenchError
from core.runs import read_events
from core.train.trainer import train
from core.workspace import REPO_ROOT
from tests.unit.engine_fixtures import import_learnable

TINY = dict(preset="tiny", test_fraction=0.3, eval_every=0)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine") / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    import_learnable(root, "nopairs", pairs=False)
    return root


def steps_of(run_dir):
    return [row for row in read_events(run_dir) if "loss" in row]


def test_tiny_model_loss_falls_and_recall_rises(workspace):
    train(workspace, "toy", "micl+late", "learn", steps=16, **{**TINY, "eval_every": 16})
    rows = steps_of(workspace / "runs" / "learn")
    evals = [row for row in read_events(workspace / "runs" / "learn") if row.get("event") == "eval"]
    assert [row["step"] for row in rows] == list(range(1, 17))
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-4:]) / 4
    assert last < first
    assert [e["step"] for e in evals] == [0, 16]
    assert evals[-1]["mean_rank"] < evals[0]["mean_rank"]
    assert evals[-1]["recall@1"] >= evals[0]["recall@1"]
    # The run folder loads as a model and holds its configs.
    from core.models.note_encoder import NoteEncoder

    model = NoteEncoder.from_pretrained(workspace / "runs" / "learn", device="cpu")
    assert model.variant == "micl+late"
    run = json.loads((workspace / "runs" / "learn" / "run.json").read_text())
    assert run["status"] == "finished" and run["dataset"] == "toy" and run["split_seed"] == 0
    assert rows[-1]["temperature"] != 3.0  # the temperature moves at its own learning rate


def test_resume_after_kill_9_follows_the_same_schedule(workspace):
    args = ["--workspace", str(workspace), "--dataset", "toy", "--variant", "micl", "--preset", "tiny",
            "--test-fraction", "0.3", "--eval-every", "0", "--checkpoint-every", "2", "--steps", "16"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "core", "train", "--run", "killed", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT)
    events = workspace / "runs" / "killed" / "events.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if events.exists() and len(steps_of(events.parent)) >= 4:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the worker finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = len(steps_of(events.parent))
    assert killed_at < 16

    train(workspace, None, None, "killed", resume=True)
    train(workspace, "toy", "micl", "straight", steps=16, checkpoint_every=2, **TINY)
    resumed, straight = steps_of(events.parent), steps_of(workspace / "runs" / "straight")
    assert [r["step"] for r in resumed] == list(range(1, 17))
    assert [r["lrs"] for r in resumed] == [r["lrs"] for r in straight]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-4, abs=1e-5)
    assert json.loads((events.parent / "run.json").read_text())["status"] == "finished"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(workspace, monkeypatch):
    from core.train import loss as loss_module

    calls = {"n": 0}
    original = loss_module.ContrastiveLoss.forward

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(loss_module.ContrastiveLoss, "forward", poisoned)
    with pytest.raises(WorkbenchError, match="loss became nan at step 5.*step-00000004"):
        train(workspace, "toy", "text", "nan", steps=10, checkpoint_every=2, **TINY)
    run_dir = workspace / "runs" / "nan"
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 4
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


def one_line_error(capsys, argv):
    code = cli(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_requests_fail_with_one_line(workspace, capsys):
    base = ["train", "--workspace", str(workspace), "--preset", "tiny", "--steps", "2", "--eval-every", "0"]
    assert "no pairs" in one_line_error(capsys, base + ["--dataset", "nopairs", "--variant", "text", "--run", "a"])
    assert "fewer than one batch" in one_line_error(
        capsys, base + ["--dataset", "toy", "--variant", "text", "--run", "b", "--batch-pairs", "500"])
    assert "unknown dataset" in one_line_error(capsys, base + ["--dataset", "nope", "--variant", "text", "--run", "c"])
    assert "unknown variant" in one_line_error(capsys, base + ["--dataset", "toy", "--variant", "nope", "--run", "d"])
    assert "no CUDA GPU" in one_line_error(
        capsys, base + ["--dataset", "toy", "--variant", "text", "--run", "e", "--device", "cuda"])
    # A run folder that exists already, without --resume.
    assert cli(base + ["--dataset", "toy", "--variant", "text", "--run", "twice"]) == 0
    capsys.readouterr()
    assert "exists already" in one_line_error(capsys, base + ["--dataset", "toy", "--variant", "text", "--run", "twice"])
    # A checkpoint of another architecture.
    err = one_line_error(capsys, base + ["--dataset", "toy", "--variant", "micl+late", "--run", "f",
                                         "--init-from", str(workspace / "runs" / "twice")])
    assert "does not match" in err
    assert "unknown run" in one_line_error(capsys, ["eval", "--workspace", str(workspace), "--run", "nope",
                                                    "--dataset", "toy"])
    assert "nothing to resume" in one_line_error(capsys, ["train", "--workspace", str(workspace), "--run", "zzz",
                                                          "--resume"])
