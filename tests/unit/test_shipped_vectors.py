"""Vectors shipped beside the demo checkpoints: installed into the vector cache only when the checkpoint's weights
and the dataset's content are the ones they were computed on; then searching encodes nothing."""
import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from core import shipped_vectors
from core.data.sample import SAMPLE_DIR
from core.demo import export_checkpoint
from core.workbench import MODALITIES, Workbench
from core.workspace import Workspace
from tests.unit.test_demo_checkpoints import make_run

RUN = "demo-basic"
NOTES = 24


def small_sample(folder, edit_title: str | None = None):
    """The first notes of the bundled sample (with their pairs and images), as upload files; `edit_title`
    changes the first note's title: the same ids, another dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(SAMPLE_DIR / "notes.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:NOTES]
    if edit_title is not None:
        rows[0]["title"] = edit_title
    with open(folder / "notes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ids = {row["note_id"] for row in rows}
    with open(SAMPLE_DIR / "pairs.csv", newline="") as f:
        pairs = [row for row in csv.DictReader(f) if row["note_id_1"] in ids and row["note_id_2"] in ids]
    with open(folder / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["note_id_1", "note_id_2"])
        writer.writeheader()
        writer.writerows(pairs)
    return folder


def workbench_with_sample(root, files) -> Workbench:
    bench = Workbench(Workspace.open(root))
    bench.store.import_dataset("sample", files / "notes.csv", files / "pairs.csv", SAMPLE_DIR / "images")
    return bench


class Encodes:
    """Counts every note a workbench encodes (the one door the vector cache and queries go through)."""

    def __init__(self, bench: Workbench):
        self.calls, self.notes = 0, 0
        original = bench.encode

        def counted(name, notes, *args, **kwargs):
            self.calls += 1
            self.notes += len(notes)
            return original(name, notes, *args, **kwargs)

        bench.encode = counted


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny run exported like a demo checkpoint, with the vectors it gives the small sample written beside it."""
    root = tmp_path_factory.mktemp("build")
    files = small_sample(root / "files")
    bench = workbench_with_sample(root / "ws", files)
    make_run(bench.workspace, RUN, "basic")
    folder = export_checkpoint(bench.workspace, RUN, root / "shipped" / "basic")
    # Encode with the exported weights, as build-demo does (it installs them first).
    user = workbench_with_sample(root / "encoded-with", files)
    assert user.install_checkpoints(root / "shipped") == [RUN]
    notes = user.notes("sample")
    vectors = {m: user.note_vectors(RUN, "sample", notes, m) for m in MODALITIES}
    shipped_vectors.write(folder, "sample", notes, vectors)
    return {"dir": root / "shipped", "folder": folder, "files": files, "vectors": vectors,
            "ids": [n.note_id for n in notes]}


def test_vector_files_are_float16_arrays_keyed_by_weights_and_dataset(shipped):
    manifest = json.loads((shipped["folder"] / shipped_vectors.MANIFEST).read_text())
    assert manifest["weights_sha256"] == shipped_vectors.file_sha256(shipped["folder"] / "model.safetensors")
    entry = manifest["datasets"]["sample"]
    assert entry["ids"] == shipped["ids"] and sorted(entry["modalities"]) == sorted(MODALITIES)
    for modality in MODALITIES:
        matrix = np.load(shipped["folder"] / shipped_vectors.vectors_file("sample", modality), allow_pickle=False)
        assert matrix.dtype == np.float16 and matrix.shape == shipped["vectors"][modality].shape


def test_matching_vectors_are_installed_and_a_search_encodes_nothing(shipped, tmp_path):
    """A fresh workspace (other paths, another import time) that imported the same files: every modality's
    vectors come from the shipped files, and neighbours and explanations need no encoder."""
    bench = workbench_with_sample(tmp_path / "fresh", shipped["files"])
    encodes = Encodes(bench)
    assert bench.install_checkpoints(shipped["dir"]) == [RUN]
    for modality in MODALITIES:
        assert bench.cached_count(RUN, "sample", modality) == (NOTES, NOTES)
        ids, matrix = bench.dataset_vectors(RUN, "sample", modality)
        expected = shipped["vectors"][modality][[shipped["ids"].index(i) for i in ids]]
        np.testing.assert_allclose(matrix, expected, atol=2e-3)  # float16 storage
    query = shipped["ids"][0]
    for modality in MODALITIES:
        hits = bench.neighbours(RUN, "sample", note_id=query, k=5, modality=modality)
        assert len(hits) == 5 and query not in {h.note_id for h in hits}
    whys = bench.explain(RUN, "sample", hits, note_id=query)
    assert len(whys) == 5 and any(w.text_score is not None for w in whys)
    assert encodes.calls == 0, f"{encodes.notes} notes encoded although the vectors were shipped"
    # Installing again (every start-up does) keeps the cache as it is.
    assert {i.outcome for i in shipped_vectors.install_all(bench.workspace, bench.store, shipped["dir"])} == {"present"}


def test_vectors_of_other_weights_are_ignored(shipped, tmp_path):
    """A rebuilt checkpoint whose vectors were not rewritten: the manifest names the old weights, so the new run
    encodes for itself rather than searching with vectors another model made."""
    other = tmp_path / "shipped"
    shutil.copytree(shipped["dir"], other)
    source = Workspace.open(tmp_path / "retrain")
    make_run(source, RUN, "basic")
    retrained = export_checkpoint(source, RUN, tmp_path / "retrained")
    shutil.copy2(retrained / "model.safetensors", other / "basic" / "model.safetensors")

    bench = workbench_with_sample(tmp_path / "fresh", shipped["files"])
    assert bench.install_checkpoints(other) == [RUN]
    outcomes = shipped_vectors.install_all(bench.workspace, bench.store, other)
    assert outcomes and all(i.outcome.startswith("skipped: the run's weights") for i in outcomes)
    assert all(bench.cached_count(RUN, "sample", m) == (0, NOTES) for m in MODALITIES)
    encodes = Encodes(bench)
    bench.neighbours(RUN, "sample", note_id=shipped["ids"][0], k=3)
    assert encodes.notes == NOTES  # the whole dataset, with the weights actually installed


def test_vectors_of_another_dataset_are_ignored(shipped, tmp_path):
    """Same note ids, one title edited: the dataset's content fingerprint differs, so nothing is installed
    (the edited note's vector would be stale, and so would any vector keyed by id alone)."""
    files = small_sample(tmp_path / "files", edit_title="Another title")
    bench = workbench_with_sample(tmp_path / "fresh", files)
    assert bench.install_checkpoints(shipped["dir"]) == [RUN]
    outcomes = shipped_vectors.install_all(bench.workspace, bench.store, shipped["dir"])
    assert outcomes and all(i.outcome.startswith("skipped: the dataset differs") for i in outcomes)
    assert all(bench.cached_count(RUN, "sample", m) == (0, NOTES) for m in MODALITIES)


def test_the_content_fingerprint_ignores_the_workspace_but_not_the_notes(shipped, tmp_path):
    a = workbench_with_sample(tmp_path / "a", shipped["files"]).notes("sample")
    b = workbench_with_sample(tmp_path / "b", shipped["files"]).notes("sample")
    assert a[0].image != b[0].image  # each workspace stores images under its own folder
    assert shipped_vectors.content_fingerprint(a) == shipped_vectors.content_fingerprint(b)
    changed = [replace(a[0], content=a[0].content + "!"), *a[1:]]
    assert shipped_vectors.content_fingerprint(changed) != shipped_vectors.content_fingerprint(a)
