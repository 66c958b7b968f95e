"""`python -m bench --only ...` keeps the other sections' figures only when they come from the same machine."""
from bench.run import merge_previous

AMD = {"cpu": "AMD EPYC", "cores": 2, "amx_bf16": False, "avx512_bf16": True, "torch": "2.13.0+cpu", "threads": 2}
XEON = {**AMD, "cpu": "Intel(R) Xeon(R) Processor", "amx_bf16": True}


def test_same_machine_keeps_other_sections_and_targets():
    previous = {"machine": AMD, "search": {"p50": 1.0}, "targets": {"search_p50": {"met": True}}}
    results = {"machine": {**AMD, "cpu_pressure_avg10_at_start": 3.0}, "train": {"step_s": 5.0},
               "targets": {"train_mfu": {"met": False}}}
    merged, dropped = merge_previous(previous, results)
    assert not dropped
    assert merged["search"] == {"p50": 1.0} and merged["train"] == {"step_s": 5.0}
    assert set(merged["targets"]) == {"search_p50", "train_mfu"}
    assert merged["machine"]["cpu_pressure_avg10_at_start"] == 3.0  # this run's machine record wins


def test_other_machine_figures_are_dropped_not_mixed():
    previous = {"machine": XEON, "matmul": {"peak_bf16_tflops": 1.96}, "targets": {"encode_mfu": {"met": True}}}
    results = {"machine": AMD, "train": {"step_s": 5.0}, "targets": {}}
    merged, dropped = merge_previous(previous, results)
    assert dropped
    assert "matmul" not in merged and "encode_mfu" not in merged["targets"]
    assert merged["train"] == {"step_s": 5.0}


def test_no_previous_file():
    results = {"machine": AMD}
    assert merge_previous({}, results) == (results, False)
