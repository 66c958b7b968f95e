"""Experiment trackers on tiny runs: `log_with="tensorboard"` writes TensorBoard event files into the run
folder holding the same losses as events.jsonl, a resumed run goes on writing there, and a tracker that is
unknown or not installed is refused with one sentence before anything trains."""
import struct

import pytest

from core.cli import main
from core.errors import WorkbenchError
from core.runs import read_events
from core.train import trackers
from core.train.trainer import train
from tests.unit.engine_fixtures import import_learnable

TINY = dict(preset="tiny", test_fraction=0.3)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("trackers") / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    return root


def read_scalars(folder) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from every TensorBoard event file under `folder`, read record by record (the
    TFRecord framing: length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = {}
    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {folder}"
    for path in files:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_tensorboard_gets_every_step_and_the_evaluation(workspace):
    train(workspace, "toy", "micl", "tracked", steps=3, log_with="tensorboard", **TINY)
    run_dir = workspace / "runs" / "tracked"
    scalars = read_scalars(run_dir / "tracking" / "tensorboard")
    losses = {row["step"]: row["loss"] for row in read_events(run_dir) if "loss" in row}
    assert sorted(scalars["train/loss"]) == [1, 2, 3]
    assert scalars["train/loss"] == pytest.approx(losses, rel=1e-6)  # float32 in the event file
    # Nested values are flattened (the learning rate of each parameter group), evaluations go under eval/.
    assert any(tag.startswith("train/lrs/") for tag in scalars)
    final = next(row for row in read_events(run_dir) if row.get("event") == "eval" and row["step"] == 3)
    # Names every tracker accepts (MLflow refuses "@"): recall@10 -> recall_at_10.
    assert scalars["eval/recall_at_10"] == {3: pytest.approx(final["recall@10"])}
    assert scalars["eval/image_path/connector_probe_r10"] == {3: pytest.approx(final["image_path"]["connector_probe_r10"])}


def test_a_resumed_run_goes_on_writing_to_its_trackers(workspace):
    train(workspace, "toy", "text", "tracked-resume", steps=4, checkpoint_every=2, log_with="tensorboard",
          callbacks=[StopAfter(2)], **TINY)
    # The resume does not repeat --log-with: the run keeps the trackers it was started with.
    train(workspace, "toy", None, "tracked-resume", resume=True)
    scalars = read_scalars(workspace / "runs" / "tracked-resume" / "tracking" / "tensorboard")
    assert sorted(scalars["train/loss"]) == [1, 2, 3, 4]


class StopAfter:
    def __init__(self, step):
        self.step = step

    def on_start(self, trainer, start_step):
        pass

    def on_step(self, trainer, row):
        if row["step"] == self.step:
            trainer.request_stop()

    def on_evaluate(self, trainer, metrics):
        pass

    def on_checkpoint(self, trainer, step):
        pass

    def on_end(self, trainer, summary):
        pass


def test_an_unknown_tracker_is_refused_before_the_run_folder_exists(workspace):
    with pytest.raises(WorkbenchError, match="unknown tracker 'tensorbord'.*tensorboard, trackio, mlflow"):
        train(workspace, "toy", "text", "typo", steps=2, log_with="tensorboard,tensorbord", **TINY)
    assert not (workspace / "runs" / "typo").exists()


def test_a_tracker_not_installed_is_one_line_from_the_cli(workspace, monkeypatch, capsys):
    monkeypatch.setattr(trackers, "_installed", lambda name: name != "mlflow")
    code = main(["train", "--workspace", str(workspace), "--dataset", "toy", "--variant", "text", "--steps", "2",
                 "--run", "no-mlflow", "--preset", "tiny", "--log-with", "tensorboard,mlflow"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.splitlines() == [err]
    assert "mlflow" in err and "pip install mlflow" in err and "tensorboard" not in err.split("pip install")[1]
    assert not (workspace / "runs" / "no-mlflow").exists()


def test_tracker_names_are_parsed_once_each_in_order():
    assert trackers.parse_trackers(" TensorBoard, mlflow,tensorboard,") == ("tensorboard", "mlflow")
    assert trackers.parse_trackers("") == ()
    assert trackers.flatten_numbers({"loss": 1, "lrs": {"llm": 0.5}, "warning": "x", "gate": None,
                                     "recall@10": 0.5, "odd key!": 2}, "train") == {
        "train/loss": 1.0, "train/lrs/llm": 0.5, "train/recall_at_10": 0.5, "train/odd key_": 2.0}


def test_two_sessions_in_one_second_keep_both_event_files(tmp_path, monkeypatch):
    """A resume right after a stop opens a second TensorBoard writer on the same folder. tensorboardX names
    its file by the second and the host, so within one second the second writer truncated the first's
    file and the steps before the resume vanished from TensorBoard."""
    import time

    from core.train.trackers import build_tracker

    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)  # both sessions in the same second
    for step in (1, 2):
        tracker = build_tracker("tensorboard", "run", tmp_path)
        tracker.start()
        tracker.log({"train/loss": float(step)}, step=step)
        tracker.finish()
    assert read_scalars(tmp_path)["train/loss"] == {1: 1.0, 2: 2.0}
