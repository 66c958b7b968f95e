"""The working set (core/data/working_set.py, through the Workbench): notes picked on a map and search results
marked (not) related become CSV files and a new dataset version that trains."""
import csv
import json
import sqlite3

import pytest

from core.data.working_set import MAX_IDS_PER_REQUEST, NOT_RELATED, RELATED
from core.errors import WorkbenchError
from core.train.trainer import train
from core.workbench import Workbench
from tests.unit.engine_fixtures import import_learnable


@pytest.fixture
def bench(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    return Workbench(root)


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_picked_notes_are_kept_once_in_the_order_picked_and_persist(bench):
    bench.working_set_add("toy", ["birds-1", "cars-0", "birds-1"])
    working = bench.working_set_add("toy", ["cars-0", "trees-2"])
    assert working.notes == ("birds-1", "cars-0", "trees-2")
    # in the workspace, not in the object: a second Workbench on the same folder sees it
    assert Workbench(bench.workspace).working_set("toy").notes == working.notes
    assert bench.working_set_remove("toy", ["cars-0"]).notes == ("birds-1", "trees-2")


def test_unknown_or_malformed_ids_are_refused_and_change_nothing(bench):
    bench.working_set_add("toy", ["birds-1"])
    with pytest.raises(WorkbenchError, match=r"dataset 'toy' has no note 'nope'.*nothing changed"):
        bench.working_set_add("toy", ["cars-0", "nope"])
    with pytest.raises(WorkbenchError, match="not note ids"):
        bench.working_set_add("toy", ["cars-0", 3])
    with pytest.raises(WorkbenchError, match="must be a list"):
        bench.working_set_add("toy", "birds-1")  # a string is not a list of its characters
    with pytest.raises(WorkbenchError, match="too many"):
        bench.working_set_add("toy", [f"x{i}" for i in range(MAX_IDS_PER_REQUEST + 1)])
    with pytest.raises(WorkbenchError, match="unknown dataset 'other'"):
        bench.working_set_add("other", ["birds-1"])
    with pytest.raises(WorkbenchError, match="has no note"):
        bench.working_set_mark("toy", "birds-1", "../../etc/passwd", RELATED)
    with pytest.raises(WorkbenchError, match="unknown mark"):
        bench.working_set_mark("toy", "birds-1", "birds-2", "maybe")
    with pytest.raises(WorkbenchError, match="against itself"):
        bench.working_set_mark("toy", "birds-1", "birds-1", RELATED)
    assert bench.working_set("toy").notes == ("birds-1",) and not bench.working_set("toy").related


def test_a_pair_has_one_mark_at_a_time_whichever_note_was_the_query(bench):
    bench.working_set_mark("toy", "birds-1", "birds-5", RELATED)
    working = bench.working_set_mark("toy", "birds-5", "birds-1", RELATED)  # the same pair, the other way round
    assert working.related == (("birds-1", "birds-5"),)
    assert working.mark_of("birds-5", "birds-1") == RELATED
    working = bench.working_set_mark("toy", "birds-1", "birds-5", NOT_RELATED)
    assert working.related == () and working.negatives == (("birds-1", "birds-5"),)
    assert working.mark_of("birds-1", "birds-5") == NOT_RELATED
    working = bench.working_set_mark("toy", "birds-1", "birds-5", None)
    assert working.empty


def test_export_writes_the_upload_format(bench, tmp_path):
    bench.working_set_add("toy", ["trees-0"])
    bench.working_set_mark("toy", "birds-1", "birds-5", RELATED)
    bench.working_set_mark("toy", "birds-1", "cars-3", NOT_RELATED)
    bench.working_set_mark("toy", "cars-0", "cars-2", RELATED)
    files = bench.working_set_export("toy", tmp_path / "out")
    assert rows(files["pairs.csv"]) == [["note_id_1", "note_id_2"], ["birds-1", "birds-5"], ["cars-0", "cars-2"]]
    assert rows(files["hard_negatives.csv"]) == [["query_id", "negative_id"], ["birds-1", "cars-3"]]
    assert rows(files["working_set_notes.csv"]) == [["note_id"], ["trees-0"]]


def test_a_reimported_dataset_starts_with_an_empty_working_set(bench, tmp_path, monkeypatch):
    bench.working_set_add("toy", ["birds-1"])
    bench.delete_dataset("toy")
    import core.data.store as store_module

    class Later(store_module.datetime):  # the same name imported again at another time
        @classmethod
        def now(cls, tz=None):
            return store_module.datetime(2100, 1, 1, tzinfo=tz)

    monkeypatch.setattr(store_module, "datetime", Later)
    import_learnable(bench.workspace.root, "toy")
    assert bench.working_set("toy").empty


def test_a_version_of_picked_notes_holds_them_and_their_pairs_and_trains(bench):
    bench.working_set_add("toy", [f"birds-{i}" for i in range(8)] + [f"cars-{i}" for i in range(8)])
    bench.working_set_mark("toy", "birds-0", "trees-1", RELATED)  # a new pair; trees-1 joins the version
    bench.working_set_mark("toy", "birds-0", "birds-1", NOT_RELATED)  # corrects a labelled pair
    info = bench.working_set_save("toy", "toy-v2", notes="picked", pairs="add")
    assert info.name in bench.dataset_names() and "working set of 'toy'" in info.source
    ids = [n.note_id for n in bench.notes("toy-v2")]
    source_order = [n.note_id for n in bench.notes("toy")]
    assert sorted(ids, key=source_order.index) == ids  # the source's order
    assert set(ids) == {f"birds-{i}" for i in range(8)} | {f"cars-{i}" for i in range(8)} | {"trees-1"}
    pairs = bench.store.pairs("toy-v2")
    expected = {frozenset(p) for p in bench.store.pairs("toy") if set(p) <= set(ids)}
    expected = (expected - {frozenset(("birds-0", "birds-1"))}) | {frozenset(("birds-0", "trees-1"))}
    assert {frozenset(p) for p in pairs} == expected and len(pairs) == len(expected)
    assert info.notes == len(ids) and info.pairs == len(pairs) and info.images == len(ids)
    assert bench.note("toy-v2", "birds-3").image == bench.note("toy", "birds-3").image  # shared image file
    assert bench._working_sets().hard_negatives("toy-v2") == [("birds-0", "birds-1")]
    # the Fine-tune tab trains on it like on any imported dataset
    summary = train(bench.workspace.root, "toy-v2", "text", "v2-run", preset="tiny", steps=2, eval_every=0,
                    test_fraction=0.3, batch_pairs=4)
    assert bench.run("v2-run").finished, summary
    assert bench.run("v2-run").dataset == "toy-v2"


def test_a_version_of_all_notes_with_marked_pairs_only(bench):
    bench.working_set_mark("toy", "birds-0", "trees-1", RELATED)
    bench.working_set_mark("toy", "cars-0", "cars-1", RELATED)
    info = bench.working_set_save("toy", "toy-marked", notes="all", pairs="marked")
    assert info.notes == len(bench.notes("toy"))
    assert bench.store.pairs("toy-marked") == [("birds-0", "trees-1"), ("cars-0", "cars-1")]
    with sqlite3.connect(bench.workspace.db_path) as conn:
        meta = json.loads(conn.execute("select meta from datasets where name = 'toy-marked'").fetchone()[0])
    assert meta["derived_from"] == "toy" and meta["pairs"] == "marked"


def test_a_version_is_refused_with_a_bad_or_taken_name_or_nothing_to_train_on(bench):
    with pytest.raises(WorkbenchError, match="working set is empty"):
        bench.working_set_save("toy", "toy-v2")
    bench.working_set_add("toy", ["birds-0", "cars-0"])  # no pair between them
    with pytest.raises(WorkbenchError, match="no related pairs"):
        bench.working_set_save("toy", "toy-v2")
    for name in ("../escape", "", "a b", "-x"):
        with pytest.raises(WorkbenchError, match="bad dataset name"):
            bench.working_set_save("toy", name, notes="all")
    with pytest.raises(WorkbenchError, match="already exists"):
        bench.working_set_save("toy", "toy", notes="all")
    with pytest.raises(WorkbenchError, match="notes must be"):
        bench.working_set_save("toy", "toy-v3", notes="some")
    assert bench.dataset_names() == ["toy"]  # nothing half-written
