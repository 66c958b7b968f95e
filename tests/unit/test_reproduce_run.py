"""The reproduction end to end on tiny runs: per-query ranks saved for the paired tests, the pool with
distractors and its chance level, the headroom check, saliency with the visual-token split, a resumed pass that
reuses everything, and the weak-text condition beside the full one."""
import json

import pytest

from core.reproduce import HEADROOM, ReproducePlan, default_workspace, reproduce, weak_text_dataset
from core.workspace import Workspace
from tests.unit.engine_fixtures import import_learnable


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    workspace = Workspace.open(root / "ws")
    import_learnable(workspace.root, "toy")
    plan = ReproducePlan(dataset="toy", steps=2, preset="tiny", batch_pairs=4, main_seeds=(0,), variants=("text", "basic"),
                         zero_shot=("zs-image",), saliency_variants=("basic",), saliency_batches=2,
                         results_dir=root / "results", report_path=root / "RESULTS.md", device="cpu")
    messages = []
    reproduce(workspace, plan, log=messages.append)
    return workspace, plan, messages


def test_results_hold_per_query_ranks_pool_chance_and_headroom(finished):
    workspace, plan, _ = finished
    ablation = json.loads((plan.results_dir / "ablation.json").read_text())
    cell = ablation["results"]["basic"]["all"]["both"]
    pool = cell["pool"]["mean"]
    assert cell["distractors"]["mean"] > 0 and cell["chance_recall@10"]["mean"] == pytest.approx(min(10, pool) / pool)
    assert "category_hit@10" in cell and "chance_category_hit@10" in cell
    per_query = json.loads((plan.results_dir / "per_query.json").read_text())
    queries = per_query["queries"]["all"]
    for name in ("text", "basic", "zs-image", HEADROOM):
        assert set(per_query["results"][name]["both"]["0"]["rank"]) == set(queries)
    assert ablation["headroom"]["run"] == plan.run_name("text", 0) and len(ablation["headroom"]["weights_by_fold"]) == 2
    saliency = json.loads((plan.results_dir / "saliency.json").read_text())
    assert {"S_v", "S_visual", "S_slot", "n_batches"} <= set(saliency["basic"][0])
    report = plan.report_path.read_text()
    assert "paired comparisons were made" in report and "Candidate pool:" in report


def test_a_second_pass_reuses_runs_evaluations_and_saliency(finished):
    workspace, plan, _ = finished
    messages = []
    reproduce(workspace, plan, log=messages.append)
    assert not any(m.startswith("$ python") for m in messages)  # nothing trained
    assert not any(m.startswith("saliency for") for m in messages)


def test_weak_text_condition_keeps_notes_pairs_and_images_and_shows_beside_the_full_one(finished):
    from dataclasses import replace

    from core.data.store import Store

    workspace, plan, _ = finished
    store = Store(workspace)
    name = weak_text_dataset(store, "toy")
    full, weak = store.notes("toy"), store.notes(name)
    assert [n.note_id for n in weak] == [n.note_id for n in full] and store.pairs(name) == store.pairs("toy")
    assert all(w.title == f.title and w.content == "" and w.topics == [] and w.category == f.category
               for w, f in zip(weak, full))
    import numpy as np

    from core.data.images import load_image
    assert all(np.array_equal(np.asarray(load_image(w.image)), np.asarray(load_image(f.image)))
               for w, f in zip(weak, full))  # the same pixels
    weak_plan = replace(plan, weak_text=True, variants=("text",), saliency_variants=())
    reproduce(workspace, weak_plan, log=lambda m: None)
    assert (plan.results_dir / "weak-text" / "ablation.json").exists()
    report = plan.report_path.read_text()
    assert "## Both conditions side by side" in report and "toy-weak-text" in report
    # The weak condition's own headroom (its text run fused with zs-image), not only the full condition's.
    weak_headroom = report.split("## Weak text: headroom", 1)[1].split("\n## ", 1)[0]
    assert plan.run_name("text", 0).replace("toy", "toy-weak-text") in weak_headroom


def test_the_default_workspace_is_outside_the_work_tree(monkeypatch, tmp_path):
    from core.workspace import REPO_ROOT

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_workspace("openclipart") == tmp_path / "notellm2-workbench" / "reproduce-openclipart"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert not default_workspace("openclipart").resolve().is_relative_to(REPO_ROOT)


def test_cross_fitting_scores_each_half_with_the_weight_tuned_on_the_other():
    from core.reproduce import cross_fitted

    # Queries q0..q3 fall into halves {q0, q2} and {q1, q3}. On {q1, q3} weight 0.0 hits both (1.0 hits one);
    # on {q0, q2} weight 1.0 hits both (0.0 hits none). So {q0, q2} is scored under 0.0, {q1, q3} under 1.0:
    # each half gets the weight the *other* half preferred, never its own.
    ranks = {0.0: {"q0": 50, "q1": 0, "q2": 50, "q3": 0}, 1.0: {"q0": 0, "q1": 0, "q2": 0, "q3": 50}}
    results = {w: {"per_query": {"rank": r}} for w, r in ranks.items()}
    merged, weights, folds = cross_fitted(results)
    assert folds == [["q0", "q2"], ["q1", "q3"]] and weights == [0.0, 1.0]
    assert merged["rank"] == {"q0": 50, "q2": 50, "q1": 0, "q3": 50}
    # Equal recall on the tuning half: the weight nearest an even mix.
    even = {w: {"per_query": {"rank": {"q0": 0, "q1": 0}}} for w in (0.0, 0.45, 1.0)}
    assert cross_fitted(even)[1] == [0.45, 0.45]


def test_training_health_comes_from_the_last_evaluation_event(tmp_path):
    from core.reproduce import _last_training_health

    rows = [{"step": 10, "event": "eval", "image_path": {"visual_loss": 3.4, "chance_loss": 3.43}},
            {"step": 11, "loss": 1.0}, {"step": 20, "event": "eval", "image_path": {"visual_loss": 2.1,
                                                                                     "chance_loss": 3.43}}]
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn")
    assert _last_training_health(tmp_path) == {"visual_loss": 2.1, "chance_loss": 3.43}
    assert _last_training_health(tmp_path / "missing") == {}


def test_batch_ratios_average_layers_then_divide():
    from core.reproduce import batch_ratios

    nan = float("nan")
    # One batch, two layers; measures S_v, S_t, S_o, S_visual, S_slot.
    per_batch = [[[0.2, 1.0, 0.1, 0.1, nan], [0.4, 3.0, 0.1, 0.3, nan]]]
    out = batch_ratios(per_batch, ["S_v", "S_t", "S_o", "S_visual", "S_slot"], [("a", "b"), ("c", "d")])
    assert out["S_v/S_t"] == [pytest.approx(0.3 / 2.0)] and out["S_visual/S_t"] == [pytest.approx(0.2 / 2.0)]
    assert out["S_slot/S_t"] == [None]
    assert out["pairs_digest"] != batch_ratios(per_batch, ["S_v", "S_t", "S_o", "S_visual", "S_slot"],
                                               [("a", "b")])["pairs_digest"]


def test_a_workspace_laid_anew_reuses_the_recorded_runs_instead_of_training_them_again(finished, tmp_path):
    """A sitting whose workspace lost every run (the cache folder was laid anew) takes the finished runs from
    their records beside the results: nothing is trained, and the table, the paired tests' ranks, the
    headroom, the saliency and the training summary stay what the first sitting measured."""
    workspace, plan, _ = finished
    before = json.loads((plan.results_dir / "ablation.json").read_text())
    ranks_before = json.loads((plan.results_dir / "per_query.json").read_text())
    for variant in plan.variants:
        assert (plan.results_dir / "runs" / f"{plan.run_name(variant, 0)}.json").exists()
    fresh = Workspace.open(tmp_path / "laid-anew")
    import_learnable(fresh.root, "toy")
    messages = []
    reproduce(fresh, plan, log=messages.append)
    assert not any(m.startswith("$ python") for m in messages), messages
    assert sum(m.startswith("reuse the recorded results of") for m in messages) == len(plan.variants)
    after = json.loads((plan.results_dir / "ablation.json").read_text())
    for variant in (*plan.variants, HEADROOM):
        assert after["results"][variant] == before["results"][variant]
    ranks_after = json.loads((plan.results_dir / "per_query.json").read_text())
    assert ranks_after["results"]["basic"] == ranks_before["results"]["basic"]
    assert ranks_after["results"][HEADROOM] == ranks_before["results"][HEADROOM]
    assert after["headroom"] == before["headroom"] and after["image_path"] == before["image_path"]
    assert json.loads((plan.results_dir / "saliency.json").read_text())["basic"]
    report = plan.report_path.read_text()
    assert f"`{plan.run_name('basic', 0)}`" in report  # its training row, from the record


def test_a_dataset_built_differently_trains_again_instead_of_reusing_records(finished, tmp_path):
    """Records evaluated on other held-out notes are not this table's: one changed test note's title is enough
    to refuse them (a paired test over queries the runs were never asked would be meaningless)."""
    import csv

    from core.data.store import Store
    from core.service import split_for

    workspace, plan, _ = finished
    source = tmp_path / "toy-source"
    from tests.unit.engine_fixtures import write_learnable_dataset

    notes_csv, pairs_csv = write_learnable_dataset(source)
    split = split_for(workspace, "zs-text", "toy")
    changed_id = split.test_note_ids[0]
    rows = list(csv.DictReader(open(notes_csv, encoding="utf-8")))
    for row in rows:
        if row["note_id"] == changed_id:
            row["title"] = row["title"] + " (edited)"
    with open(notes_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    other = Workspace.open(tmp_path / "other")
    Store(other).import_dataset("toy", notes_csv, pairs_csv, source / "images")
    messages = []
    reproduce(other, plan, log=messages.append)
    assert not any(m.startswith("reuse the recorded results of") for m in messages)
    assert any("evaluated on other held-out notes" in m for m in messages)
    assert sum(m.startswith("$ python") for m in messages) == len(plan.variants)


def test_a_record_is_refused_under_another_budget_or_when_torn(tmp_path):
    from dataclasses import replace

    from core.reproduce_records import read_record, record_path, write_record

    plan = ReproducePlan(dataset="toy", steps=2, preset="tiny", batch_pairs=4, results_dir=tmp_path)
    entry = {"rank": {"q": 0}, "query_subsets": {"all": ["q"]}}
    write_record(plan, "run-a", "basic", 0, {"all": {}}, {"both": entry, "text": entry}, None, "digest-1")
    record, why = read_record(plan, "run-a", "digest-1")
    assert why == "" and record["per_query"]["both"] == {"rank": {"q": 0}} and record["query_subsets"] == {"all": ["q"]}
    assert read_record(replace(plan, batch_pairs=8), "run-a", "digest-1")[0] is None
    assert "another budget" in read_record(replace(plan, steps=3), "run-a", "digest-1")[1]
    assert read_record(plan, "run-a", "digest-2")[0] is None
    assert read_record(plan, "run-b", "digest-1") == (None, "no record")
    record_path(plan, "run-a").write_text('{"version": 1, "run": "run-a"')  # torn
    assert "unreadable" in read_record(plan, "run-a", "digest-1")[1]
    with pytest.raises(Exception):
        record_path(plan, "../escape")


def test_the_report_never_lands_on_the_hand_written_results_summary(monkeypatch, tmp_path):
    """`reproduce` without --results-dir (or with the default folder spelled out) writes results/REPRODUCTION.md;
    the repository's RESULTS.md, which summarises every table by hand, is never its target."""
    import core.reproduce as module
    from core.cli import build_parser
    from core.workspace import REPO_ROOT

    seen = []
    monkeypatch.setattr(module, "reproduce", lambda workspace, plan, log: seen.append(plan))
    for extra in ([], ["--results-dir", str(REPO_ROOT / "results")], ["--results-dir", str(tmp_path / "elsewhere")]):
        args = build_parser().parse_args(["reproduce", "--workspace", str(tmp_path / "ws"), *extra])
        assert args.func(args) == 0
    assert [plan.report_path for plan in seen] == [REPO_ROOT / "results" / "REPRODUCTION.md"] * 2 + [
        tmp_path / "elsewhere" / "RESULTS.md"]
    assert all(plan.report_path != REPO_ROOT / "RESULTS.md" for plan in seen)


def test_a_record_is_refused_when_its_preset_changed_values(tmp_path, monkeypatch):
    """Same preset name, other values (a learning rate changed between sittings): another recipe."""
    from core.reproduce_records import read_record, write_record
    from core.train import presets

    plan = ReproducePlan(dataset="toy", steps=2, preset="tiny", batch_pairs=4, results_dir=tmp_path)
    write_record(plan, "run-a", "basic", 0, {"all": {}}, {"both": {"rank": {}}}, None, "d")
    assert read_record(plan, "run-a", "d")[0] is not None
    tiny = presets.get_preset("tiny")
    changed = presets.Preset.from_dict({**tiny.as_dict(), "train": {**tiny.train, "lr_new": 1.0}})
    monkeypatch.setattr(presets, "PRESET_TABLE", tuple(changed if p.name == "tiny" else p
                                                       for p in presets.PRESET_TABLE))
    assert "another budget" in read_record(plan, "run-a", "d")[1]


def test_the_gate_read_out_averages_only_notes_with_a_picture(monkeypatch):
    """A note without a picture keeps its LLM state by construction (z = 1): counting it would make the gate
    look as if training had moved it toward the LLM."""
    import pandas as pd

    import core.analysis.gate as gate_module
    import core.service as service
    from core.reproduce import _gate_read_out

    frame = pd.DataFrame({"note_id": ["a", "b", "c"], "llm_share": [0.4, 0.6, 1.0],
                          "llm_share_visual": [0.3, 0.5, 1.0], "has_image": [True, True, False]})
    monkeypatch.setattr(gate_module, "gate_shares", lambda model, notes: frame)
    monkeypatch.setattr(service, "load_encoder", lambda workspace, run: type("M", (), {"fusion": object()})())
    figures = _gate_read_out(None, "run", [])
    assert figures == {"gate_llm_share": pytest.approx(0.5), "gate_llm_share_visual": pytest.approx(0.4)}
    no_visual = frame.assign(llm_share_visual=float("nan"))
    monkeypatch.setattr(gate_module, "gate_shares", lambda model, notes: no_visual)
    assert set(_gate_read_out(None, "run", [])) == {"gate_llm_share"}  # late / basic+late: no n_v
    monkeypatch.setattr(service, "load_encoder", lambda workspace, run: type("M", (), {"fusion": None})())
    assert _gate_read_out(None, "run", []) == {}


def test_a_note_without_a_title_keeps_a_title_length_head_of_its_content_in_the_weak_text_copy(tmp_path):
    """Dropping the content of a note whose text is all content would leave it empty: the import refuses
    such a note, so the whole weak-text copy (and the condition) would fail on real data."""
    from PIL import Image

    from core.data.store import Store

    source = tmp_path / "source"
    (source / "images").mkdir(parents=True)
    rows = [("a", "red round apple", "sweet fruit", "fruit"), ("b", "green pear", "", "fruit"),
            ("c", "", "Flag of the Second Spanish Republic 1931-1939", "flag"), ("d", "blue flag here", "", "flag")]
    lines = ["note_id,title,content,image,topics,category"]
    for i, (note_id, title, content, category) in enumerate(rows):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(source / "images" / f"{note_id}.png")
        lines.append(f"{note_id},{title},{content},{note_id}.png,,{category}")
    (source / "notes.csv").write_text("\n".join(lines) + "\n")
    (source / "pairs.csv").write_text("note_id_1,note_id_2\na,b\nc,d\n")
    store = Store(Workspace.open(tmp_path / "ws"))
    store.import_dataset("mixed", source / "notes.csv", source / "pairs.csv", source / "images")
    weak = {n.note_id: n for n in store.notes(weak_text_dataset(store, "mixed"))}
    assert set(weak) == {"a", "b", "c", "d"} and store.pairs("mixed-weak-text") == store.pairs("mixed")
    assert weak["a"].title == "red round apple" and weak["a"].content == ""
    assert weak["c"].title == "Flag of the" and weak["c"].content == ""  # the median title has 3 words
