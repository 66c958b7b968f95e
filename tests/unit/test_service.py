"""The service functions the app calls, on a tiny trained run."""
import numpy as np
import pytest
from PIL import Image

from core import service
from core.baselines import ZERO_SHOT
from core.data.schema import Note
from core.train.trainer import train
from tests.unit.engine_fixtures import import_learnable


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("service") / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    train(root, "toy", "micl+late", "tiny-run", preset="tiny", steps=3, eval_every=0, test_fraction=0.3)
    return root


def test_variants_list_runs_first_then_zero_shot(workspace):
    names = [row["name"] for row in service.list_variants(workspace, "toy")]
    assert names == ["tiny-run", *ZERO_SHOT]
    assert service.list_variants(workspace, "other")[0]["kind"] == "zero-shot"


def test_vectors_are_cached_and_a_new_note_is_encoded_alone(workspace, monkeypatch):
    ids, matrix = service.dataset_vectors(workspace, "tiny-run", "toy")
    assert matrix.shape == (len(ids), 16) and np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-4)
    encoded = []
    original = service.encode

    def counting(workspace_, name, notes, *args, **kwargs):
        encoded.append(len(notes))
        return original(workspace_, name, notes, *args, **kwargs)

    monkeypatch.setattr(service, "encode", counting)
    again_ids, again = service.dataset_vectors(workspace, "tiny-run", "toy")
    assert encoded == [] and again_ids == ids and np.array_equal(again, matrix)
    notes = service._store(workspace).notes("toy") + [Note("extra", title="red bird", content="bird")]
    more = service.note_vectors(workspace, "tiny-run", "toy", notes)
    assert encoded == [1] and np.allclose(more[:-1], matrix)


def test_neighbours_exclude_the_query_and_take_composed_notes(workspace):
    rows = service.neighbours(workspace, "tiny-run", "toy", note_id="birds-0", k=5)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and "birds-0" not in [r["note_id"] for r in rows]
    assert rows[0]["score"] >= rows[-1]["score"]
    composed = Note("", title="bird", content="a bird", image=Image.new("RGB", (16, 16), (220, 30, 30)))
    assert len(service.neighbours(workspace, "tiny-run", "toy", query=composed, k=3)) == 3


def test_evaluation_json_and_table(workspace):
    result = service.evaluate_variant(workspace, "tiny-run", "toy", modality="image")
    for key in ("recall@1", "recall@10", "recall@50", "recall@100", "recall@10_ci95", "queries", "pool", "subsets"):
        assert key in result
    table = service.evaluation_table(workspace, "toy", ["tiny-run"], modalities=("both", "text"))
    assert set(table["modality"]) == {"both", "text"} and "recall@10" in table.columns
    assert {"all", "short_query", "long_target"} <= set(table["split"])


def test_evaluation_pool_holds_distractors_and_a_run_keeps_the_split_it_trained_on(workspace):
    import json

    result = service.evaluate_variant(workspace, "tiny-run", "toy")
    targets = service.evaluate_variant(workspace, "tiny-run", "toy", protocol="targets")
    assert result["distractor_fraction"] == 0.1 and result["distractors"] > 0
    assert result["pool"] == targets["pool"] + result["distractors"] and targets["distractors"] == 0
    assert result["per_query"]["rank"].keys() == targets["per_query"]["rank"].keys()  # the same queries
    assert result["chance"]["recall@10"] == pytest.approx(min(10, result["pool"]) / result["pool"])
    assert "category_hit@10" in result and "category_hit@10" in result["chance"]
    # A run from before distractors were held out trained on those notes: its split holds none.
    run_file = service._run_folder(workspace, "tiny-run") / "run.json"
    info = json.loads(run_file.read_text())
    try:
        run_file.write_text(json.dumps({k: v for k, v in info.items() if k != "distractor_fraction"}))
        assert service.split_for(workspace, "tiny-run", "toy").distractor_note_ids == []
    finally:
        run_file.write_text(json.dumps(info))


def test_zero_shot_text_baseline_evaluates_like_a_run(workspace):
    result = service.evaluate_variant(workspace, "zs-text", "toy")
    assert result["queries"] > 0 and 0 <= result["recall@1"] <= 1
    assert service.neighbours(workspace, "zs-text", "toy", note_id="cars-1", k=2)[0]["note_id"].startswith("cars")


def test_delete_dataset_needs_its_name_waits_for_jobs_and_drops_its_caches(tmp_path):
    from core import jobs
    from core.workspace import Workspace

    root = tmp_path / "ws"
    root.mkdir()
    import_learnable(root, "doomed")
    import_learnable(root, "kept")
    ws = Workspace.open(root)
    doomed_vectors = ws.indexes_dir / "some-run" / "doomed"
    kept_vectors = ws.indexes_dir / "some-run" / "kept"
    for folder in (doomed_vectors, kept_vectors):
        folder.mkdir(parents=True)
        (folder / "vectors-both.npy").write_bytes(b"cached")

    with pytest.raises(service.WorkbenchError, match="type the dataset name 'doomed' to confirm"):
        service.delete_dataset(root, "doomed", confirm="doome")
    with jobs._db(ws) as db:  # a queued job on the dataset: its worker is about to read the notes
        db["jobs"].insert({"job_id": "j1", "kind": "train", "run": "r1", "dataset": "doomed", "state": "queued",
                           "step": 0, "total": 1, "message": "", "pid": None, "pid_start": None, "log_path": "",
                           "argv": "[]", "cancel_requested": 0, "created_at": "", "updated_at": ""})
    with pytest.raises(service.WorkbenchError, match="in use by train job j1"):
        service.delete_dataset(root, "doomed", confirm="doomed")
    store = service._store(ws)
    assert store.has_dataset("doomed") and doomed_vectors.exists()

    with jobs._db(ws) as db:
        db["jobs"].update("j1", {"state": "finished"})
    service.delete_dataset(root, "doomed", confirm="doomed")
    assert not store.has_dataset("doomed") and not doomed_vectors.exists()
    assert store.has_dataset("kept") and kept_vectors.exists() and len(store.notes("kept")) > 0
    with pytest.raises(service.WorkbenchError, match="doomed"):
        service.delete_dataset(root, "doomed")
