"""The reproduction's bookkeeping: seeds aggregate to mean/std, claims are judged by the numbers, the report and
its plots are written, and training summaries come from a run's own files."""
import json
import statistics

import pytest

from core.reproduce import ReproducePlan, _aggregate
from core.reproduce_report import _claims, training_summary, write_report


def _metrics(both, text, image, half_interval=0.05):
    def cell(value):
        return {"recall@10": value, "recall@50": min(1.0, value + 0.1), "recall@100": min(1.0, value + 0.2),
                "queries": 100, "recall@10_ci_low": value - half_interval, "recall@10_ci_high": value + half_interval}
    return {"all": {"both": cell(both), "text": cell(text), "image": cell(image)}}


def _ablation(per_variant):
    return {variant: _aggregate({seed: _metrics(*values) for seed, values in enumerate(seeds)})
            for variant, seeds in per_variant.items()}


def test_aggregate_gives_mean_std_and_every_seed():
    merged = _aggregate({0: _metrics(0.5, 0.5, 0.1), 1: _metrics(0.7, 0.6, 0.2), 2: _metrics(0.6, 0.4, 0.3)})
    entry = merged["all"]["both"]["recall@10"]
    assert entry["mean"] == statistics.fmean([0.5, 0.7, 0.6])
    assert entry["std"] == statistics.stdev([0.5, 0.7, 0.6])
    assert entry["seeds"] == {"0": 0.5, "1": 0.7, "2": 0.6}
    single = _aggregate({0: _metrics(0.5, 0.5, 0.1)})
    assert single["all"]["image"]["recall@10"]["std"] == 0.0


def _per_query(hits_by_variant, subsets=None):
    """per_query.json from {variant: {modality: [hits of seed 0, hits of seed 1, ...]}} over queries q0..qN."""
    count = len(next(iter(next(iter(hits_by_variant.values())).values()))[0])
    ids = [f"q{i}" for i in range(count)]
    queries = {"all": ids, **(subsets or {})}
    results = {variant: {modality: {str(seed): {"rank": {q: (0 if hit else 50) for q, hit in zip(ids, hits)}}
                                    for seed, hits in enumerate(seeds)}
                         for modality, seeds in by_modality.items()}
               for variant, by_modality in hits_by_variant.items()}
    return {"queries": queries, "results": results}


def test_claims_are_judged_by_a_paired_test_not_by_overlapping_intervals():
    # 100 queries; basic hits the first 40. micl hits the same 40 and 10 more: 10 points up, which overlapping
    # unpaired bootstrap intervals (about ±10 points each) could never call, but every discordant query
    # favours micl: McNemar p = 2 / 2^10.
    basic = [1] * 40 + [0] * 60
    micl = [1] * 50 + [0] * 50
    # late: 5 points up, with 15 queries gained and 10 lost: no difference shown.
    late = [1] * 30 + [0] * 10 + [1] * 15 + [0] * 45
    per_query = _per_query({"basic": {"both": [basic], "text": [basic], "image": [[0] * 100]},
                            "micl": {"both": [micl]}, "late": {"both": [late]}})
    ablation = _ablation({"basic": [(0.40, 0.40, 0.0)], "micl": [(0.50, 0.5, 0.1)], "late": [(0.45, 0.45, 0.1)]})
    lines, rows = _claims(ablation, per_query)
    text = "\n".join(lines)
    assert "`micl` vs `basic`: better than `basic`, +10.0 points" in text
    micl_row = next(r for r in rows if r["a"] == ("micl", "both"))
    assert micl_row["p_value"] == pytest.approx(2 / 2 ** 10) and micl_row["test"] == "mcnemar-exact"
    assert micl_row["p_holm"] == pytest.approx(min(1.0, 3 * 2 / 2 ** 10))  # 4 comparisons, micl's p the 2nd smallest
    assert "`late` vs `basic`: not shown to differ from `basic`, +5.0 points" in text
    # Removing basic's image changes nothing, removing its text loses all 40 hits: neglect holds by retrieval,
    # and the report says it cannot tell neglect from a broken image path without the health figures.
    assert "Holds: the image's contribution is not shown while the text's is." in text
    assert "Image-path health was not measured" in text
    assert "4 paired comparisons were made" in text
    assert "margin" not in text  # no unpaired-margin verdict anywhere


def test_a_remedy_is_also_judged_on_image_only_queries_against_basic_image_only():
    # micl's image + text hits equal basic's, but from the picture alone it finds 30 targets where basic's
    # image-only vector finds 5 (the same 5): the report must say the remedy restored the image's use while
    # image + text did not move. basic's image-only vector is the side compared, not its image + text one
    # (which hits 40 and would make micl's 30 read as worse).
    both = [1] * 40 + [0] * 60
    basic_image = [1] * 5 + [0] * 95
    micl_image = [1] * 30 + [0] * 70
    per_query = _per_query({"basic": {"both": [both], "image": [basic_image]},
                            "micl": {"both": [both], "image": [micl_image]}})
    ablation = _ablation({"basic": [(0.40, 0.40, 0.05)], "micl": [(0.40, 0.40, 0.30)]})
    lines, rows = _claims(ablation, per_query)
    text = "\n".join(lines)
    image_row = next(r for r in rows if r["a"] == ("micl", "image"))
    assert image_row["b"] == ("basic", "image") and image_row["difference"] == pytest.approx(0.25)
    assert image_row["verdict"] == "higher"
    assert ("`micl` vs `basic`: not shown to differ from `basic`, +0.0 points" in text
            and "From the picture alone (image-only queries): +25.0 points (higher, Holm p" in text)


def test_claims_cover_each_split_and_average_seeds_before_pairing():
    basic = [1] * 40 + [0] * 60
    subsets = {"short_query": [f"q{i}" for i in range(0, 100, 2)], "long_query": [f"q{i}" for i in range(1, 100, 2)]}
    # Two seeds of micl+late: seed 0 hits 60 queries, seed 1 the first 40 only: averaged per query (0.5 on
    # 20 queries), then paired with basic by a sign-flip permutation test.
    seeds = [[1] * 60 + [0] * 40, basic]
    per_query = _per_query({"basic": {"both": [basic]}, "micl+late": {"both": seeds}}, subsets)
    ablation = _ablation({"basic": [(0.40, 0.4, 0.1)], "micl+late": [(0.60, 0.5, 0.1), (0.40, 0.4, 0.1)]})
    lines, rows = _claims(ablation, per_query)
    assert len(rows) == 3 and {r["split"] for r in rows} == {"all", "short_query", "long_query"}
    row = next(r for r in rows if r["split"] == "all")
    assert row["difference"] == pytest.approx(0.10) and row["test"] == "sign-flip permutation"
    assert row["seeds_a"] == 2 and row["queries"] == 100
    short = next(r for r in rows if r["split"] == "short_query")
    assert short["queries"] == 50 and short["difference"] == pytest.approx(0.10)
    text = "\n".join(lines)
    assert "by split: short query +10.0" in text and "3 paired comparisons were made" in text
    assert "3. **`micl+late` is the best trained variant**" in text


def test_image_path_figures_decide_between_neglect_and_a_weak_image_path():
    basic = [1] * 40 + [0] * 60
    per_query = _per_query({"basic": {"both": [basic], "text": [basic], "image": [[0] * 100]}})
    ablation = _ablation({"basic": [(0.40, 0.40, 0.0)]})
    healthy = {"basic": {"connector_probe_r10": 0.20, "zs_image_r10": 0.25}}
    text = "\n".join(_claims(ablation, per_query, healthy)[0])
    assert "0.80x" in text and "the picture reaches the LLM" in text
    broken = {"basic": {"connector_probe_r10": 0.03, "zs_image_r10": 0.25}}
    assert "weak image path" in "\n".join(_claims(ablation, per_query, broken)[0])


def _with_pool(ablation, pool=500, distractors=300):
    for variant in ablation.values():
        for by_modality in variant.values():
            for metrics in by_modality.values():
                metrics["pool"] = {"mean": pool, "std": 0.0}
                metrics["distractors"] = {"mean": distractors, "std": 0.0}
                metrics["chance_recall@10"] = {"mean": 10 / pool, "std": 0.0}
                metrics["chance_recall@50"] = {"mean": 50 / pool, "std": 0.0}
                metrics["chance_recall@100"] = {"mean": 100 / pool, "std": 0.0}
                metrics["category_hit@10"] = {"mean": 0.9, "std": 0.0}
                metrics["chance_category_hit@10"] = {"mean": 0.25, "std": 0.0}
    return ablation


def test_report_writes_tables_plots_pool_chance_saliency_and_both_conditions(tmp_path):
    results = tmp_path / "results"
    (results / "sample").mkdir(parents=True)
    (results / "sample" / "RESULTS.md").write_text("# sample\n")
    plan = ReproducePlan(dataset="openclipart", results_dir=results, report_path=tmp_path / "RESULTS.md",
                         main_seeds=(0, 1))
    ablation = _with_pool(_ablation({"basic": [(0.6, 0.6, 0.1), (0.62, 0.6, 0.12)], "zs-text": [(0.4, 0.4, 0.05)]}))
    saliency = {"basic": [{"layer": 0, "S_v": 0.01, "S_t": 0.5, "S_o": 0.2, "S_visual": 0.01, "S_slot": None,
                           "n_batches": 50},
                          {"layer": 1, "S_v": 0.03, "S_t": 0.5, "S_o": 0.2, "S_visual": 0.03, "S_slot": None,
                           "n_batches": 50}],
                "micl": [{"layer": 0, "S_v": 0.2, "S_t": 0.5, "S_o": 0.2, "S_visual": 0.02, "S_slot": 0.4,
                          "n_batches": 50}]}
    runs = [{"run": "repro-openclipart-basic-cpu-100s-seed0", "variant": "basic", "seed": 0, "steps": 100,
             "step_s": 5.0, "train_minutes": 8.3, "final_loss": 1.25},
            {"run": "repro-openclipart-micl-cpu-100s-seed0", "variant": "micl", "seed": 0, "steps": 100,
             "step_s": 6.0, "train_minutes": 10.0, "final_loss": 1.5, "machines": ["EPYC | 9004, 1 threads"]}]
    passes = [{"started": "2026-01-01T10:00:00", "elapsed_s": 600, "trained": [runs[0]["run"]]}]
    basic = [1] * 60 + [0] * 40
    main = {"dataset": "openclipart", "ablation": ablation, "saliency": saliency, "passes": passes, "runs": runs,
            "per_query": _per_query({"basic": {"both": [basic, basic], "text": [basic, basic],
                                               "image": [[0] * 100] * 2}, "zs-text": {"both": [[1] * 40 + [0] * 60]}})}
    weak = {"dataset": "openclipart-weak-text", "ablation": _with_pool(_ablation({"basic": [(0.3, 0.2, 0.1)]})),
            "per_query": _per_query({"basic": {"both": [basic]}}), "passes": [], "runs": []}
    write_report(plan, main, weak=weak)

    report = (tmp_path / "RESULTS.md").read_text()
    assert "| `basic` | 61.0 ± 1.4 | 60.0 | 11.0 ± 1.4 |" in report
    assert "| `zs-text` | 40.0 |" in report
    assert "Candidate pool: 500 held-out notes (300 of them nobody's target) for 100 queries." in report
    assert "Chance: Recall@10 2.0, Recall@50 10.0, Recall@100 20.0, category hit@10 25.0." in report
    assert "| chance | 2.0 | 2.0 | 2.0 | 10.0 | 20.0 | 25.0 |" in report
    assert "| 90.0 |" in report  # category hit@10 column
    # Mean S_v, S_visual, S_slot, S_t, S_o; S_v / S_t and S_visual / S_t: the slot's share is visible.
    assert "| `basic` | 0.02 | 0.02 | – | 0.5 | 0.2 | 0.040 | 0.040 | 50 |" in report
    assert "| `micl` | 0.2 | 0.02 | 0.4 | 0.5 | 0.2 | 0.400 | 0.040 | 50 |" in report
    assert "## Both conditions side by side" in report and "| `basic` | 61.0 ± 1.4 | 30.0 |" in report
    assert "## Weak text (title only): claims" in report
    assert "Not measured in this pass" in report  # the image-path hook, without its figures
    assert "| `repro-openclipart-basic-cpu-100s-seed0` | `basic` | 0 | 100 | 5.0 | 8.3 | 1.250 |" in report
    assert "build-openclipart --import-as openclipart" in report
    assert "- [results/sample/RESULTS.md](results/sample/RESULTS.md)" in report
    assert "Evaluated on: " in report and " cores, " in report
    assert "| 1.250 | not recorded |" in report  # a run from before sittings were recorded says so
    assert "| 1.500 | EPYC \\| 9004, 1 threads |" in report  # a pipe in a CPU's name stays inside its cell
    for plot in ("recall_by_modality.png", "saliency_by_layer.png"):
        assert (results / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(results/{plot})" in report


def test_training_summary_reads_run_files(tmp_path):
    run = tmp_path / "repro-x-basic-cpu-2s-seed1"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"variant": "basic", "train": {"seed": 1}}))
    sitting = {"event": "start", "processes": 1, "machine": {"cpu": "EPYC | 9004", "threads": 2}}
    events = [{**sitting, "step": 0}, {"step": 1, "loss": 3.0, "step_s": 4.0}, {"step": 2, "event": "checkpoint"},
              {**sitting, "step": 1}, {"step": 2, "loss": 2.0, "step_s": 6.0},
              {"step": 2, "event": "eval", "recall@10": 0.5},
              {"event": "start", "step": 2, "processes": 2, "machine": {"cpu": "Xeon", "threads": 8, "gpu": "H100"}}]
    (run / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    summary = training_summary(run)
    # A machine met twice is listed once; the order is the sittings'.
    assert summary == {"run": run.name, "variant": "basic", "seed": 1, "steps": 2, "step_s": 5.0,
                       "train_minutes": 10.0 / 60, "final_loss": 2.0,
                       "machines": ["EPYC | 9004, 2 threads", "Xeon, 8 threads, H100, 2 processes"]}
    assert training_summary(tmp_path / "missing") is None


def test_a_rerun_remembers_the_pass_that_trained_the_runs(tmp_path):
    import os
    import time

    from core.reproduce import _earlier_passes, _this_pass
    from core.reproduce_report import _passes_text
    from core.workspace import Workspace

    workspace = Workspace.open(tmp_path / "ws")
    plan = ReproducePlan(dataset="toy", variants=("basic",), main_seeds=(0,), results_dir=tmp_path / "results")
    plan.results_dir.mkdir()
    # A file from before passes were recorded: it ended an hour ago after 30 minutes, during which the run began.
    ended = time.time() - 3600
    run = workspace.run_dir(plan.run_name("basic", 0))
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"created_at": time.strftime("%Y-%m-%dT%H:%M:%S",
                                                                          time.localtime(ended - 600))}))
    legacy = plan.results_dir / "ablation.json"
    legacy.write_text(json.dumps({"plan": {"dataset": "toy", "steps": 100, "preset": "cpu", "batch_pairs": 16,
                                           "main_seeds": [0], "other_seeds": [0]}, "elapsed_s": 1800}))
    os.utime(legacy, (ended, ended))
    passes = _earlier_passes(plan, workspace)
    assert len(passes) == 1 and passes[0]["elapsed_s"] == 1800 and passes[0]["trained"] == [run.name]

    this = _this_pass(plan, time.time(), workspace)
    assert this["trained"] == []  # the run is older than this pass
    text = _passes_text(passes + [this])
    assert "30 min, trained 1 run(s)" in text and "0 min, trained no run" in text

    other = ReproducePlan(dataset="toy", steps=50, variants=("basic",), main_seeds=(0,), results_dir=plan.results_dir)
    assert _earlier_passes(other, workspace) == []  # another budget is another table
    # The same budget filled over sittings: more variants, more seeds. The pass that trained `basic` stays.
    wider = ReproducePlan(dataset="toy", variants=("basic", "micl"), main_seeds=(0, 1, 2),
                          results_dir=plan.results_dir)
    assert _earlier_passes(wider, workspace) == passes


def test_saliency_rise_is_tested_over_paired_batches_and_told_apart_from_the_slot():
    basic = [1] * 40 + [0] * 60
    per_query = _per_query({"basic": {"both": [basic], "text": [basic], "image": [[0] * 100]}})
    ablation = _ablation({"basic": [(0.40, 0.40, 0.0)]})
    noise = [0.001 * (-1) ** i for i in range(10)]
    batches = {"basic": {"pairs_digest": "same", "S_v/S_t": [0.05 + n for n in noise],
                         "S_visual/S_t": [0.05 + n for n in noise]},
               # micl: the span's ratio rises by 0.3 in every batch, its visual tokens' ratio does not move.
               "micl": {"pairs_digest": "same", "S_v/S_t": [0.35 + n for n in noise],
                        "S_visual/S_t": [0.05 - n for n in noise]}}
    lines, rows = _claims(ablation, per_query, None, batches)
    text = "\n".join(lines)
    span = next(r for r in rows if r.get("measure") == "S_v/S_t")
    assert span["difference"] == pytest.approx(0.30) and span["p_value"] == pytest.approx(2 / 2 ** 10)
    assert "the rise over the image span comes from the slot and its instruction, not from the visual tokens" in text
    assert "4 paired comparisons were made (2 of Recall@10" in text and "2 of saliency" in text
    # Batches of different pairs do not pair up.
    batches["micl"]["pairs_digest"] = "other"
    assert not [r for r in _claims(ablation, per_query, None, batches)[1] if r.get("measure") != "Recall@10"]
