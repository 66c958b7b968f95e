"""The reproduction's bookkeeping: seeds aggregate to mean/std, claims are judged by the numbers, the report and
its plots are written, and training summaries come from a run's own files."""
import json
import statistics

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


def test_claims_follow_the_numbers_whichever_way_they_come_out():
    neglecting = _ablation({"basic": [(0.60, 0.59, 0.10), (0.62, 0.61, 0.12)],
                            "micl": [(0.80, 0.70, 0.40)],
                            "micl+late": [(0.40, 0.30, 0.35), (0.42, 0.31, 0.36)],
                            "zs-concat": [(0.50, 0.45, 0.40)]})
    lines = "\n".join(_claims(neglecting))
    assert "Holds: removing the image costs far less" in lines
    assert "`micl` vs `basic`: 80.0 vs 61.0 ± 1.4: better than `basic`" in lines
    assert "`micl+late` vs `basic`" in lines and "worse than `basic`" in lines
    assert "`micl` (80.0)" in lines and "`micl+late` is not the best here." in lines
    assert "-9.0 points (beyond the margin ±5.0)" in lines  # micl+late 41.0 vs zs-concat 50.0

    balanced = _ablation({"basic": [(0.60, 0.35, 0.35)], "micl+late": [(0.62, 0.40, 0.40)]})
    lines = "\n".join(_claims(balanced))
    assert "Does not hold here: the image carries weight" in lines
    # 2 points apart with ±5-point bootstrap intervals: not a difference
    assert "not distinguishable from `basic` (margin used: ±5.0)" in lines
    assert ("`micl+late` is best, as the paper claims, by 2.0 points over `basic` (within the margin ±5.0, "
            "so not shown to be better).") in lines


def test_report_writes_table_plots_and_run_summaries(tmp_path):
    results = tmp_path / "results"
    (results / "sample").mkdir(parents=True)
    (results / "sample" / "RESULTS.md").write_text("# sample\n")
    plan = ReproducePlan(dataset="openclipart", results_dir=results, report_path=tmp_path / "RESULTS.md",
                         main_seeds=(0, 1))
    ablation = _ablation({"basic": [(0.6, 0.6, 0.1), (0.62, 0.6, 0.12)], "zs-text": [(0.4, 0.4, 0.05)]})
    saliency = {"basic": [{"layer": 0, "S_v": 0.01, "S_t": 0.5, "S_o": 0.2},
                          {"layer": 1, "S_v": 0.03, "S_t": 0.5, "S_o": 0.2}]}
    runs = [{"run": "repro-openclipart-basic-cpu-100s-seed0", "variant": "basic", "seed": 0, "steps": 100,
             "step_s": 5.0, "train_minutes": 8.3, "final_loss": 1.25}]
    passes = [{"started": "2026-01-01T10:00:00", "elapsed_s": 600, "trained": [runs[0]["run"]]}]
    write_report(plan, ablation, saliency, passes, runs=runs)

    report = (tmp_path / "RESULTS.md").read_text()
    assert "| `basic` | 61.0 ± 1.4 | 60.0 | 11.0 ± 1.4 |" in report
    assert "| `zs-text` | 40.0 |" in report
    assert "| `basic` | 0.02 | 0.5 | 0.2 | 0.040 |" in report  # mean S_v / mean S_t
    assert "| `repro-openclipart-basic-cpu-100s-seed0` | `basic` | 0 | 100 | 5.0 | 8.3 | 1.250 |" in report
    assert "build-openclipart --import-as openclipart" in report
    assert "- [results/sample/RESULTS.md](results/sample/RESULTS.md)" in report
    assert "Measured on: " in report and " cores, " in report
    for plot in ("recall_by_modality.png", "saliency_by_layer.png"):
        assert (results / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(results/{plot})" in report


def test_training_summary_reads_run_files(tmp_path):
    run = tmp_path / "repro-x-basic-cpu-2s-seed1"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"variant": "basic", "train": {"seed": 1}}))
    events = [{"step": 1, "loss": 3.0, "step_s": 4.0}, {"step": 2, "event": "checkpoint"},
              {"step": 2, "loss": 2.0, "step_s": 6.0}, {"step": 2, "event": "eval", "recall@10": 0.5}]
    (run / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    summary = training_summary(run)
    assert summary == {"run": run.name, "variant": "basic", "seed": 1, "steps": 2, "step_s": 5.0,
                       "train_minutes": 10.0 / 60, "final_loss": 2.0}
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
