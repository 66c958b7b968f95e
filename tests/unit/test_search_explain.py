"""Neighbours that explain themselves: per-modality similarity from the variant's own cached vectors, shared
topics and words, labelled pairs, and the query a page shows first."""
import numpy as np
import pytest
from PIL import Image

from core.data.images import ink_share, looks_blank, trim_margins
from core.data.schema import Note
from core.errors import WorkbenchError
from core.explain import Explanation, default_query, shared_topics, shared_words, words
from core.train.trainer import train
from core.workbench import Workbench
from tests.unit.engine_fixtures import import_learnable


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain") / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    train(root, "toy", "micl+late", "tiny-run", preset="tiny", steps=2, eval_every=0)
    return root


def test_scores_are_the_cosines_of_the_cached_modality_vectors(workspace):
    wb = Workbench(workspace)
    hits = wb.neighbours("tiny-run", "toy", note_id="birds-0", k=6)
    explained = wb.explain("tiny-run", "toy", hits, note_id="birds-0")
    assert [e.note_id for e in explained] == [h.note_id for h in hits]
    assert all(isinstance(e, Explanation) for e in explained)
    for modality, field in (("text", "text_score"), ("image", "image_score")):
        ids, matrix = wb.dataset_vectors("tiny-run", "toy", modality)
        row = {note_id: i for i, note_id in enumerate(ids)}
        query = matrix[row["birds-0"]]
        expected = [float(matrix[row[h.note_id]] @ query) for h in hits]
        assert np.allclose([getattr(e, field) for e in explained], expected, atol=1e-5), modality
    # labelled pairs: birds-0 is paired with birds-1 and birds-2 (and the notes pairing to it)
    related = wb.related("toy")["birds-0"]
    assert [e.related for e in explained] == [h.note_id in related for h in hits]
    assert all("bird" in e.shared_words for e in explained if e.note_id.startswith("birds-"))
    assert all(e.image_share is None for e in explained)  # the gate only when asked


def test_the_explanation_reads_the_cache_before_the_index_is_built(workspace, monkeypatch):
    wb = Workbench(workspace)  # a fresh workbench: no text or image index in memory
    hits = wb.neighbours("tiny-run", "toy", note_id="cars-1", k=3)
    cold = wb.explain("tiny-run", "toy", hits, note_id="cars-1")
    wb.dataset_vectors("tiny-run", "toy", "text")
    wb.dataset_vectors("tiny-run", "toy", "image")

    def refuse(*args, **kwargs):
        raise AssertionError("a warm explanation encoded again")

    monkeypatch.setattr(wb, "encode", refuse)
    monkeypatch.setattr(wb, "note_vectors", refuse)
    warm = wb.explain("tiny-run", "toy", hits, note_id="cars-1")
    assert np.allclose([e.text_score for e in cold], [e.text_score for e in warm], atol=1e-5)
    assert np.allclose([e.image_score for e in cold], [e.image_score for e in warm], atol=1e-5)


def test_a_composed_query_without_image_has_no_image_score(workspace):
    wb = Workbench(workspace)
    composed = Note("(composed query)", title="bird", content="a bird on a branch")
    hits = wb.neighbours("tiny-run", "toy", query=composed, k=4)
    explained = wb.explain("tiny-run", "toy", hits, query=composed)
    assert all(e.image_score is None for e in explained)
    text = wb.encode("tiny-run", [composed], "text")[0]
    _, matrix = wb.dataset_vectors("tiny-run", "toy", "text")
    ids = wb.dataset_vectors("tiny-run", "toy", "text")[0]
    expected = [float(matrix[ids.index(h.note_id)] @ text) for h in hits]
    assert np.allclose([e.text_score for e in explained], expected, atol=1e-4)
    assert not any(e.related for e in explained)  # a composed note has no labelled pairs
    with_image = Note("(composed query)", title="bird", image=Image.new("RGB", (16, 16), (220, 30, 30)))
    assert all(e.image_score is not None
               for e in wb.explain("tiny-run", "toy", hits, query=with_image))


def test_the_gate_share_comes_on_request_for_late_fusion(workspace):
    wb = Workbench(workspace)
    hits = wb.neighbours("tiny-run", "toy", note_id="trees-2", k=2)
    explained = wb.explain("tiny-run", "toy", hits, note_id="trees-2", gate=True)
    assert all(0.0 <= e.image_share <= 1.0 for e in explained)
    # a baseline without a gate: no share, no error
    assert all(e.image_share is None for e in wb.explain("zs-image", "toy", hits, note_id="trees-2", gate=True))


def test_a_variant_that_ignores_a_modality_has_no_score_for_it(workspace):
    wb = Workbench(workspace)
    hits = wb.neighbours("zs-image", "toy", note_id="stars-3", k=2)
    explained = wb.explain("zs-image", "toy", hits, note_id="stars-3")
    assert all(e.text_score is None and e.image_score is not None for e in explained)
    assert wb.variant("toy", "zs-text").reads_image is False and wb.variant("toy", "tiny-run").reads_image


def test_explain_refuses_unknown_notes(workspace):
    wb = Workbench(workspace)
    with pytest.raises(WorkbenchError, match="has no note"):
        wb.explain("tiny-run", "toy", ["nope"], note_id="birds-0")
    with pytest.raises(WorkbenchError, match="either"):
        wb.explain("tiny-run", "toy", [], note_id="birds-0", query=Note("q", title="x"))


def test_shared_words_and_topics():
    query = Note("q", title="<script>alert(1)</script> Red Bird", content="the bird sings", topics=["Bird", "red"])
    other = Note("n", title="Blue bird", content="A script for birds", topics=["bird", "sky"])
    assert shared_words(query, other) == ("bird", "script")
    assert shared_topics(query, other) == ("bird",)
    assert words("The and of a 42 Bird bird") == ["bird"]  # stop words, short words and numbers go


def _blank(note):
    return note.image == "blank.png"


def test_the_default_query_is_the_most_related_titled_note_with_a_real_picture():
    notes = [Note("first", title="First", image="a.png"),
             Note("untitled", title="", image="b.png"),
             Note("no-picture", title="No picture"),
             Note("blank", title="Blank", image="blank.png"),
             Note("good", title="Good", content="words here", image="c.png"),
             Note("also", title="Also", image="d.png")]
    related = {"untitled": {"x", "y", "z", "w"}, "no-picture": {"x", "y", "z", "w"}, "blank": {"x", "y", "z"},
               "good": {"x", "y"}, "also": {"x", "y"}, "first": {"x"}}
    assert default_query(notes, related, _blank) == "good"  # ties: more words first
    assert default_query(notes, {}, _blank) == "good"  # no pairs at all: still a titled note with a picture
    bare = [Note("a", title=""), Note("b", title="", content="x")]
    assert default_query(bare, {"b": {"a"}}, _blank) == "b"  # nothing qualifies: the most related note
    assert default_query([], {}, _blank) is None


def test_the_workbench_remembers_its_default_query(workspace, monkeypatch):
    wb = Workbench(workspace)
    chosen = wb.default_query("toy")
    assert chosen in {n.note_id for n in wb.notes("toy")}
    monkeypatch.setattr("core.explain.default_query", lambda *a, **k: pytest.fail("chosen again"))
    assert wb.default_query("toy") == chosen


def test_trim_margins_cuts_white_paper_and_keeps_a_blank_picture():
    picture = Image.new("RGB", (200, 100), "white")
    picture.paste((0, 0, 0), (80, 40, 120, 60))
    trimmed = trim_margins(picture)
    assert trimmed.size[0] < 60 and trimmed.size[1] < 30 and trimmed.size[0] >= 40
    blank = Image.new("RGB", (50, 50), "white")
    assert trim_margins(blank).size == (50, 50)
    assert looks_blank(blank) and looks_blank(Image.new("RGB", (50, 50), (90, 90, 90)))
    assert not looks_blank(picture) and 0 < ink_share(picture) < 0.1
