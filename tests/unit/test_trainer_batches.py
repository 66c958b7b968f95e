"""Length-bucketed batches: pairs stay whole, no note repeats in a batch, every pair is used once per epoch,
and the padding a step reports falls; the trainer's switch forces the peft path."""
import numpy as np
import pytest

from core.runs import read_events
from core.train.trainer import BatchSchedule, TrainConfig, epoch_batches, train
from tests.unit.engine_fixtures import import_learnable


def _pairs(count=400, notes=300, seed=0):
    rng = np.random.default_rng(seed)
    pairs = set()
    while len(pairs) < count:
        a, b = rng.choice(notes, 2, replace=False)
        pairs.add((f"n{a}", f"n{b}"))
    return sorted(pairs)


def test_bucketed_batches_are_valid_and_group_similar_lengths():
    pairs = _pairs()
    lengths = list(np.random.default_rng(1).integers(20, 140, len(pairs)))
    plain = epoch_batches(pairs, 16, seed=0, epoch=0)
    bucketed = epoch_batches(pairs, 16, seed=0, epoch=0, lengths=lengths, buckets=8)
    for batches in (plain, bucketed):
        used = [i for batch in batches for i in batch]
        assert len(used) == len(set(used))  # no pair twice in an epoch
        for batch in batches:
            notes = [n for i in batch for n in pairs[i]]
            assert len(notes) == len(set(notes)) and len(batch) == 16
    assert len(bucketed) >= len(plain) - 1

    def waste(batches):  # padded positions over all positions, a batch padded to its longest pair
        padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
        return 1 - sum(lengths[i] for batch in batches for i in batch) / padded

    assert waste(bucketed) < waste(plain) / 2
    assert bucketed == epoch_batches(pairs, 16, seed=0, epoch=0, lengths=lengths, buckets=8)  # deterministic
    # Batch order is shuffled after packing: lengths do not rise through the epoch.
    longest = [max(lengths[i] for i in batch) for batch in bucketed]
    assert longest != sorted(longest)
    schedule = BatchSchedule(pairs, 16, 0, lengths, 8)
    assert schedule.batch(0) == [pairs[i] for i in bucketed[0]]


def test_runs_saved_before_bucketing_resume_unbucketed():
    assert TrainConfig.from_dict({"dataset": "d", "variant": "text", "run": "r"}).length_buckets == 0
    assert TrainConfig(dataset="d", variant="text", run="r").length_buckets > 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine") / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    return root


def test_steps_report_padding_and_the_switch_forces_peft(workspace, monkeypatch):
    from core.models.note_encoder import NoteEncoder

    used = []
    original = NoteEncoder._use_lean_training
    monkeypatch.setattr(NoteEncoder, "_use_lean_training",
                        lambda self, *args: used.append(original(self, *args)) or used[-1])
    settings = dict(preset="tiny", test_fraction=0.3, eval_every=0, steps=2)
    train(workspace, "toy", "micl+late", "lean", **settings)
    assert used.count(True) == 2  # the two training steps; calibration and evaluation run without gradients
    rows = [row for row in read_events(workspace / "runs" / "lean") if "loss" in row]
    assert all(0.0 <= row["padding_fraction"] < 1.0 for row in rows)
    used.clear()
    train(workspace, "toy", "micl+late", "peft", lean_training=False, length_buckets=0, **settings)
    assert used and not any(used)
