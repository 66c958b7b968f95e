"""The Workbench, the one door the app and the CLI use: typed answers, warm queries from memory, the
evaluation split of a run, and vectors that follow the encoder's weights."""
import time

import numpy as np
import pytest
import torch
from PIL import Image

from core import service
from core.data.schema import Note
from core.data.splits import split_dataset
from core.errors import WorkbenchError
from core.train.trainer import train
from core.workbench import ZERO_SHOT, Evaluation, Hit, JobState, Variant, Workbench
from tests.unit.engine_fixtures import import_learnable


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("workbench") / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    # A split that is not the default one (seed 0, 20%): evaluation must use it.
    train(root, "toy", "micl+late", "tiny-run", preset="tiny", steps=3, eval_every=0, test_fraction=0.3,
          split_seed=7)
    return root


def test_variants_are_typed_runs_first_then_zero_shot(workspace):
    wb = Workbench(workspace)
    variants = wb.variants("toy")
    assert all(isinstance(v, Variant) for v in variants)
    assert [v.name for v in variants] == ["tiny-run", *ZERO_SHOT]
    run = variants[0]
    assert run.kind == "run" and run.variant == "micl+late" and run.steps == 3 and run.late_fusion
    assert run.description and not run.zero_shot and variants[1].zero_shot
    assert wb.variant("toy", "zs-llm").zero_shot and wb.variants(None) == []
    # Only NoteEncoders have attention to analyse: runs and the untrained MLRM, not the frozen embedders.
    mlrm, llm = wb.variant("toy", "zs-mlrm"), wb.variant("toy", "zs-llm")
    assert mlrm.has_attention and mlrm.late_fusion and "untrained" in mlrm.description
    assert not llm.has_attention and run.has_attention
    record = wb.run("tiny-run")
    assert record.finished and record.has_weights and record.test_fraction == 0.3 and record.split_seed == 7


def test_neighbours_match_the_service_and_come_with_their_notes(workspace):
    wb = Workbench(workspace)
    hits = wb.neighbours("tiny-run", "toy", note_id="birds-0", k=5)
    assert all(isinstance(h, Hit) for h in hits) and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert "birds-0" not in [h.note_id for h in hits] and hits[0].score >= hits[-1].score
    rows = service.neighbours(workspace, "tiny-run", "toy", note_id="birds-0", k=5)
    assert [h.note_id for h in hits] == [r["note_id"] for r in rows]
    assert np.allclose([h.score for h in hits], [r["score"] for r in rows], atol=1e-5)
    assert hits[0].note.title  # the stored note itself, ready to render
    composed = Note("", title="bird", content="a bird", image=Image.new("RGB", (16, 16), (220, 30, 30)))
    assert len(wb.neighbours("tiny-run", "toy", query=composed, k=3)) == 3
    with pytest.raises(WorkbenchError, match="has no note"):
        wb.neighbours("tiny-run", "toy", note_id="nope")
    # One pool of encoders per process, whichever door asked first.
    assert wb.encoder("tiny-run") is service.load_encoder(workspace, "tiny-run") is Workbench(workspace).encoder("tiny-run")


def test_a_warm_query_reads_no_notes_and_encodes_nothing(workspace, monkeypatch):
    wb = Workbench(workspace)
    first = wb.neighbours("tiny-run", "toy", note_id="cars-1", k=4)

    def refuse(*args, **kwargs):
        raise AssertionError("a warm query re-read or re-encoded the dataset")

    monkeypatch.setattr(wb.store, "notes", refuse)
    monkeypatch.setattr(wb, "encode", refuse)
    monkeypatch.setattr(wb, "note_vectors", refuse)
    again = wb.neighbours("tiny-run", "toy", note_id="cars-1", k=4)
    assert [h.note_id for h in again] == [h.note_id for h in first]


def test_a_trained_run_is_evaluated_on_its_own_split(workspace):
    wb = Workbench(workspace)
    result = wb.evaluate("tiny-run", "toy", modality="text")
    assert isinstance(result, Evaluation)
    assert (result.split_seed, result.test_fraction) == (7, 0.3)
    own = split_dataset(wb.store, "toy", 0.3, 7)
    assert wb.split("tiny-run", "toy").test_pairs == own.test_pairs
    assert result.queries <= len(own.test_pairs) and 10 in result.recall and result.recall10_ci95 is not None
    # Zero-shot baselines have no split of their own: they share the default one.
    assert (wb.split("zs-text", "toy").seed, wb.split("zs-text", "toy").test_fraction) == (0, 0.2)


def test_vectors_follow_the_encoder_weights_after_retraining(workspace):
    """New weights under the same run name must not be served the old run's cached vectors."""
    from core.models.note_encoder import NoteEncoder

    wb = Workbench(workspace)
    ids, before = wb.dataset_vectors("tiny-run", "toy")
    warm_hits = [h.note_id for h in wb.neighbours("tiny-run", "toy", note_id="trees-2", k=3)]
    folder = wb.runs.folder("tiny-run")
    model = NoteEncoder.from_pretrained(folder, device="cpu")
    with torch.no_grad():
        model.head.weight.add_(torch.randn_like(model.head.weight))  # "retrained": other weights
    model.save_pretrained(folder)
    _, after = wb.dataset_vectors("tiny-run", "toy")
    fresh = wb.encode("tiny-run", wb.store.notes("toy"))
    assert not np.allclose(before, after, atol=1e-3)
    assert np.allclose(after, fresh, atol=1e-4)
    # A second Workbench (another process) reads the on-disk cache: it must not serve the old vectors either.
    _, other = Workbench(workspace).dataset_vectors("tiny-run", "toy")
    assert np.allclose(other, fresh, atol=1e-4) and len(warm_hits) == 3


def test_jobs_are_typed_and_delete_refuses_a_busy_dataset(tmp_path):
    from core import jobs

    root = tmp_path / "ws"
    root.mkdir()
    import_learnable(root, "doomed")
    wb = Workbench(root)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")  # queued just now: its worker is still starting
    with jobs._db(wb.workspace) as db:
        db["jobs"].insert({"job_id": "j1", "kind": "train", "run": "r1", "dataset": "doomed", "state": "queued",
                           "step": 0, "total": 1, "message": "", "pid": None, "pid_start": None, "log_path": "",
                           "argv": "[]", "cancel_requested": 0, "created_at": now, "updated_at": now})
    job = wb.job("j1")
    assert job.state is JobState.QUEUED and job.active and wb.latest_job() == job
    with pytest.raises(WorkbenchError, match="in use by train job j1"):
        wb.delete_dataset("doomed", confirm="doomed")
    with jobs._db(wb.workspace) as db:
        db["jobs"].update("j1", {"state": "finished"})
    assert wb.job("j1").state is JobState.FINISHED and not wb.job("j1").active
    assert len(wb.notes("doomed")) > 0
    (wb.map_cache_dir("doomed") / "doomed-tiny-both-0123.npy").write_bytes(b"map")
    wb.delete_dataset("doomed", confirm="doomed")
    assert not (wb.workspace.indexes_dir / "_maps" / "doomed").exists()  # its maps went with it
    assert wb.dataset_names() == []
    with pytest.raises(WorkbenchError, match="unknown dataset"):
        wb.notes("doomed")


def test_the_cli_answers_through_the_workbench(workspace, capsys):
    import json

    from core.cli import main as cli

    assert cli(["neighbors", "--workspace", str(workspace), "--run", "tiny-run", "--dataset", "toy",
                "--note", "birds-0", "-k", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["rank"] for row in rows] == [1, 2, 3] and all(row["title"] for row in rows)
    assert cli(["eval", "--workspace", str(workspace), "--run", "tiny-run", "--dataset", "toy",
                "--modality", "text"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (result["split_seed"], result["test_fraction"]) == (7, 0.3) and "recall@10" in result


def test_job_states_are_the_job_queue_states():
    from core import jobs
    from core.workbench import ACTIVE_JOB_STATES

    assert {state.value for state in JobState} == set(jobs.STATES)
    assert {state.value for state in ACTIVE_JOB_STATES} == set(jobs.ACTIVE)


def test_a_reimported_dataset_is_read_again(tmp_path):
    """The in-memory notes follow the store: a dataset deleted and imported again under the same name (other
    notes) must not be answered from the old copy."""
    from core.data.store import Store

    root = tmp_path / "ws"
    root.mkdir()
    import_learnable(root, "toy", per_category=5, partners=1)
    wb = Workbench(root)
    before = {n.note_id for n in wb.notes("toy")}
    Workbench(root).delete_dataset("toy", confirm="toy")  # another process: this one holds the old notes
    import_learnable(root, "toy", per_category=7, partners=1)
    after = {n.note_id for n in wb.notes("toy")}
    assert len(after) > len(before) and after == {n.note_id for n in Store(root).notes("toy")}


def test_a_worker_trains_from_its_json_spec(workspace, capsys):
    """What the app's Start button sends a worker: one JSON spec, read back with its types."""
    from core.cli import main as cli
    from core.service import training_spec

    spec = training_spec("toy", "text", "spec-run", "tiny", 2,
                         {"lr_new": 0.005, "eval_every": 0, "test_fraction": 0.3, "embedding_dim": 8, "llm": None})
    assert cli(["train", "--workspace", str(workspace), "--run", "spec-run", "--spec", spec]) == 0
    record = Workbench(workspace).run("spec-run")
    assert record.finished and record.step == 2 and record.variant == "text" and record.preset == "tiny"
    assert record.info["train"]["lr_new"] == 0.005 and record.info["model"]["embedding_dim"] == 8


def test_the_encode_command_fills_the_cache_the_workbench_reads(workspace, capsys):
    import json

    from core.cli import main as cli

    assert cli(["encode", "--workspace", str(workspace), "--run", "tiny-run", "--dataset", "toy",
                "--modality", "text"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    wb = Workbench(workspace)
    index, _, matrix = wb.vector_cache("tiny-run", "toy", "text").load()
    assert out["notes"] == len(wb.notes("toy")) == len(index) and matrix is not None
    assert out["vectors"].endswith("text.npy") and str(wb.workspace.indexes_dir) in out["vectors"]


@pytest.mark.parametrize("door", ["workbench", "service"])
def test_zs_concat_is_built_from_its_parts_cached_vectors_without_encoding_them_again(workspace, tmp_path,
                                                                                     monkeypatch, door):
    """Start-up warms zs-text and zs-image, then zs-concat: the concatenation must come from the two caches
    just filled (normalised, side by side, renormalised), not from running both encoders a second time."""
    import shutil

    from core.baselines import concatenated
    from core.data.store import Store

    root = tmp_path / "ws"
    shutil.copytree(workspace, root, ignore=shutil.ignore_patterns("indexes"))
    notes = Store(root).notes("toy")
    encoded: list[tuple[str, int]] = []
    rng = np.random.default_rng(0)
    width = {"zs-text": 6, "zs-image": 4}

    def fake_encode(name, todo, modality):
        encoded.append((name, len(todo)))
        if name not in width:
            pytest.fail(f"{name} was encoded instead of composed from its parts")
        return rng.normal(size=(len(todo), width[name])).astype(np.float32)

    if door == "workbench":
        wb = Workbench(root)
        monkeypatch.setattr(wb, "encode", lambda name, todo, modality="both", progress=None, **kw:
                            fake_encode(name, todo, modality))
        vectors = lambda name, some: wb.note_vectors(name, "toy", some)  # noqa: E731
    else:
        monkeypatch.setattr(service, "encode", lambda ws, name, todo, modality="both", progress=None, **kw:
                            fake_encode(name, todo, modality))
        vectors = lambda name, some: service.note_vectors(root, name, "toy", some)  # noqa: E731
    text, image = vectors("zs-text", notes), vectors("zs-image", notes)
    assert encoded == [("zs-text", len(notes)), ("zs-image", len(notes))]
    both = vectors("zs-concat", notes)
    assert encoded == [("zs-text", len(notes)), ("zs-image", len(notes))]  # nothing encoded again
    assert np.allclose(both, concatenated([text, image]), atol=1e-6)
    assert np.allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-5)
    assert np.allclose(both[:, :6] / np.linalg.norm(both[:, :6], axis=1, keepdims=True),
                       text / np.linalg.norm(text, axis=1, keepdims=True), atol=1e-5)
    # A note new to both parts is encoded once by each part, then composed.
    from dataclasses import replace
    extra = replace(notes[0], note_id="fresh-note", title="a new title")
    vectors("zs-concat", [extra])
    assert encoded[2:] == [("zs-text", 1), ("zs-image", 1)]
