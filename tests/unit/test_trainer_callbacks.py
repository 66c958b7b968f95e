"""Trainer callbacks on tiny runs: a caller's callback sees every step, evaluation and checkpoint in the
order they happen, can stop the run the way SIGTERM does, and a callback that raises stops the run as
failed with its last checkpoint kept, so the run resumes as after any failure."""
import json

import pytest

from core.errors import WorkbenchError
from core.runs import read_events
from core.train.checkpoint import latest_checkpoint
from core.train.trainer import CallbackError, Trainer, TrainerCallback, TrainConfig, preset_configs, train
from tests.unit.engine_fixtures import import_learnable

TINY = dict(preset="tiny", test_fraction=0.3)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("callbacks") / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    return root


class Recorder(TrainerCallback):
    """Every hook call as (hook, step), plus what the run's own records said at that moment."""

    def __init__(self):
        self.calls, self.rows, self.metrics, self.summary = [], [], [], None
        self.on_disk_at_checkpoint = []

    def on_start(self, trainer, start_step):
        self.calls.append(("start", start_step))

    def on_step(self, trainer, row):
        self.calls.append(("step", row["step"]))
        self.rows.append(dict(row))

    def on_evaluate(self, trainer, metrics):
        self.calls.append(("evaluate", metrics["step"]))
        self.metrics.append(json.loads(json.dumps(metrics)))

    def on_checkpoint(self, trainer, step):
        self.calls.append(("checkpoint", step))
        run = json.loads((trainer.run_dir / "run.json").read_text())
        self.on_disk_at_checkpoint.append((latest_checkpoint(trainer.run_dir).name, run["checkpoint_step"]))

    def on_end(self, trainer, summary):
        self.calls.append(("end", summary["step"]))
        self.summary = summary


def test_a_callback_sees_every_step_evaluation_and_checkpoint_in_order(workspace):
    recorder = Recorder()
    summary = train(workspace, "toy", "micl", "watched", steps=6, eval_every=3, checkpoint_every=2,
                    callbacks=[recorder], **TINY)
    assert recorder.calls == [
        ("start", 0), ("evaluate", 0),  # the baseline before training
        ("step", 1), ("step", 2), ("checkpoint", 2), ("step", 3), ("evaluate", 3), ("step", 4), ("checkpoint", 4),
        ("step", 5), ("step", 6), ("evaluate", 6), ("checkpoint", 6), ("end", 6)]
    assert recorder.summary == summary and summary["status"] == "finished"
    # What the callback got is what events.jsonl holds, row for row.
    events = read_events(workspace / "runs" / "watched")
    strip = lambda row: {k: v for k, v in row.items() if k not in ("time", "event")}
    assert [strip(r) for r in events if "loss" in r] == recorder.rows
    assert [strip(r) for r in events if r.get("event") == "eval"] == recorder.metrics
    # The evaluation's image-path figures reach the callback (micl has a vision tower).
    assert all("chance_loss" in m["image_path"] for m in recorder.metrics)
    assert "visual_loss" in recorder.metrics[1]["image_path"]
    # on_checkpoint comes once the checkpoint is on disk and run.json points at it.
    assert recorder.on_disk_at_checkpoint == [("step-00000002", 2), ("step-00000004", 4), ("step-00000006", 6)]


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, row):
        if row["step"] == self.step:
            trainer.request_stop()


def test_a_callback_stops_the_run_like_sigterm(workspace):
    recorder = Recorder()
    summary = train(workspace, "toy", "text", "stopped", steps=8, eval_every=0, checkpoint_every=5,
                    callbacks=[StopAt(3), recorder], **TINY)
    run_dir = workspace / "runs" / "stopped"
    assert summary["status"] == "cancelled" and summary["step"] == 3
    # The stop step gets its own checkpoint (3 is no multiple of 5), so the run resumes from it.
    assert recorder.calls[-2:] == [("checkpoint", 3), ("end", 3)]
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 3
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "cancelled" and run["step"] == 3
    assert read_events(run_dir)[-1]["event"] == "cancelled"
    assert train(workspace, None, None, "stopped", resume=True)["status"] == "finished"
    assert [r["step"] for r in read_events(run_dir) if "loss" in r] == list(range(1, 9))


class Exploding(TrainerCallback):
    """Raises at one step; chosen behaviour: the run stops as failed, its last checkpoint kept."""

    def __init__(self, step):
        self.step, self.ended = step, None

    def on_step(self, trainer, row):
        if row["step"] == self.step:
            raise RuntimeError("boom")

    def on_end(self, trainer, summary):
        self.ended = summary


def test_a_callback_that_raises_stops_the_run_as_failed_and_it_resumes(workspace):
    exploding = Exploding(3)
    with pytest.raises(CallbackError, match=r"Exploding\.on_step raised RuntimeError: boom at step 3; "
                                            r"training stopped, the last good checkpoint \(step-00000002\)") as error:
        train(workspace, "toy", "text", "exploded", steps=6, eval_every=0, checkpoint_every=2,
              callbacks=[exploding], **TINY)
    assert isinstance(error.value, WorkbenchError)  # the CLI prints it as one line, the job records it
    assert isinstance(error.value.__cause__, RuntimeError)  # the callback's own traceback is kept
    run_dir = workspace / "runs" / "exploded"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "failed" and "Exploding.on_step" in run["message"]
    assert run["checkpoint_step"] == 2
    last = read_events(run_dir)[-1]
    assert last["event"] == "stopped" and last["step"] == 3 and "boom" in last["reason"]
    assert exploding.ended["status"] == "failed"  # told how the run ended, like every callback
    # Nothing is corrupted: the resumed run redoes step 3 on and ends with each step once.
    assert train(workspace, None, None, "exploded", resume=True)["status"] == "finished"
    events = read_events(run_dir)
    assert [r["step"] for r in events if "loss" in r] == list(range(1, 7))
    assert not [r for r in events if r.get("event") == "stopped"]
    # Each sitting says where it ran, from the step it began at: a step time can be read against its machine.
    sittings = [r for r in events if r.get("event") == "start"]
    assert [r["step"] for r in sittings] == [0, 2]
    assert all(r["processes"] == 1 and r["machine"]["threads"] >= 1 and r["machine"]["cpu"] for r in sittings)


class FailsAtEnd(TrainerCallback):
    def on_end(self, trainer, summary):
        raise ValueError("tracker offline")


def test_a_callback_failing_at_the_end_leaves_the_end_state(workspace):
    with pytest.raises(CallbackError, match=r"FailsAtEnd\.on_end raised ValueError: tracker offline after the "
                                            r"run ended \(finished at step 2\)"):
        train(workspace, "toy", "text", "ended", steps=2, eval_every=0, callbacks=[FailsAtEnd()], **TINY)
    run = json.loads((workspace / "runs" / "ended" / "run.json").read_text())
    assert run["status"] == "finished" and run["step"] == 2


def test_an_object_without_the_hooks_is_refused_before_training(workspace):
    train_values, model = preset_configs("tiny", "text")
    config = TrainConfig(dataset="toy", variant="text", run="never", **train_values)

    class OnlySteps:
        def on_step(self, trainer, row):
            pass

    with pytest.raises(WorkbenchError, match="OnlySteps has no on_start, on_evaluate, on_checkpoint, on_end"):
        Trainer(workspace, config, model, callbacks=[OnlySteps()])
    assert not (workspace / "runs" / "never").exists()
