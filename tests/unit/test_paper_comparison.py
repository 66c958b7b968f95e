"""The Paper view's core: two variants paired on the same test queries (ranks, Recall@10, core.stats' paired
interval and test, trivial-metric flags), and the reproduction's claims judged from its per-query ranks."""
import json

import pytest

from core.errors import WorkbenchError
from core.workbench import PAPER_K, PairedEvaluation, PaperClaims, Workbench
from tests.unit.engine_fixtures import import_learnable


@pytest.fixture(scope="module")
def workbench(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper") / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    return Workbench(root)


def test_ranks_agree_with_the_evaluation(workbench):
    paired = workbench.paired_comparison("toy", "zs-image", "zs-text", k=1)
    assert isinstance(paired, PairedEvaluation) and paired.queries == len(paired.ranks) > 0
    for name, side in (("zs-image", "a"), ("zs-text", "b")):
        evaluation = workbench.evaluate(name, "toy")
        ranks = [getattr(row, f"rank_{side}") for row in paired.ranks]
        assert all(rank >= 1 for rank in ranks)  # counted from 1
        for k in (1, 5, 10):
            assert sum(rank <= k for rank in ranks) / len(ranks) == pytest.approx(evaluation.recall[k])
        assert paired.pool == evaluation.pool
    assert paired.recall_a == pytest.approx(workbench.evaluate("zs-image", "toy").recall[1])
    assert paired.difference == pytest.approx(paired.recall_b - paired.recall_a)
    assert paired.ci95[0] <= paired.difference <= paired.ci95[1]
    assert paired.chance == pytest.approx(1 / paired.pool)
    # B's biggest gains first
    gains = [row.gain for row in paired.ranks]
    assert gains == sorted(gains, reverse=True)


def test_a_variant_against_itself_differs_by_nothing(workbench):
    same = workbench.paired_comparison("toy", "zs-image", "zs-image", k=1)
    assert same.difference == 0 and same.p_value == 1 and same.ci95 == (0.0, 0.0)
    assert all(row.gain == 0 for row in same.ranks)


def test_swapping_the_sides_flips_the_sign(workbench):
    ab = workbench.paired_comparison("toy", "zs-image", "zs-text", k=1)
    ba = workbench.paired_comparison("toy", "zs-text", "zs-image", k=1)
    assert ba.difference == pytest.approx(-ab.difference)
    assert ba.p_value == pytest.approx(ab.p_value)
    assert (ba.recall_a, ba.recall_b) == (ab.recall_b, ab.recall_a)
    assert {(r.query, r.rank_a, r.rank_b) for r in ab.ranks} == {(r.query, r.rank_b, r.rank_a) for r in ba.ranks}


def test_trivial_metrics_are_flagged_with_a_sentence(workbench):
    paired = workbench.paired_comparison("toy", "zs-image", "zs-text", k=1)
    assert paired.few_queries and not paired.k_covers_pool  # the toy split has a handful of queries
    covering = workbench.paired_comparison("toy", "zs-image", "zs-text", k=paired.pool)
    assert covering.k_covers_pool and covering.trivial and not covering.significant
    assert covering.recall_a == covering.recall_b == 1.0
    assert any(f"pool holds {paired.pool} notes" in reason for reason in covering.trivial_reasons)
    assert any("fewer than 30" in reason for reason in covering.trivial_reasons)


def test_bad_requests_are_refused_with_a_sentence(workbench):
    with pytest.raises(WorkbenchError, match="k must be at least 1"):
        workbench.paired_comparison("toy", "zs-image", "zs-text", k=0)
    with pytest.raises(WorkbenchError):
        workbench.paired_comparison("toy", "zs-image", "no-such-run")


# ------------------------------------------------------------------------------------ the reproduction's claims
def _per_query(queries: int, hits: dict) -> dict:
    """per_query.json as the reproduction writes it: variant -> modality -> seed -> {rank}."""
    ids = [f"q{i}" for i in range(queries)]
    results = {}
    for (variant, modality), count in hits.items():
        ranks = {q: (0 if i < count else 50) for i, q in enumerate(ids)}
        results.setdefault(variant, {}).setdefault(modality, {})["0"] = {"rank": ranks}
    return {"queries": {"all": ids}, "results": results}


def _write_reproduction(folder, dataset, per_query=None, superseded=False):
    folder.mkdir(parents=True)
    (folder / "ablation.json").write_text(json.dumps({"plan": {"dataset": dataset}, "results": {"x": {}}}))
    if per_query is not None:
        (folder / "per_query.json").write_text(json.dumps(per_query))
    if superseded:
        (folder / "RESULTS.md").write_text("# Old\n\n> **Superseded: kept for comparison, not a finding.**\n")


def test_claims_are_judged_from_the_reproductions_per_query_ranks(workbench, tmp_path):
    hits = {("basic", "both"): 40, ("basic", "text"): 40, ("basic", "image"): 10, ("text", "both"): 38,
            ("micl", "both"): 70, ("late", "both"): 72, ("basic+late", "both"): 60, ("micl+late", "both"): 90}
    _write_reproduction(tmp_path / "results" / "demo", "toy", _per_query(100, hits))
    claims = workbench.paper_claims("toy", tmp_path / "results")
    assert isinstance(claims, PaperClaims) and claims.judged and not claims.superseded
    assert claims.source.endswith("demo") and claims.tests == 10
    by_number = {claim.number: claim for claim in claims.claims}
    assert by_number["1"].outcome == "holds"  # the image adds nothing to basic, the text does
    assert by_number["2"].outcome == "holds" and by_number["3"].outcome == "holds"
    micl = next(c for c in by_number["2"].comparisons if c.a == ("micl", "both"))
    assert micl.difference == pytest.approx(0.3) and micl.verdict == "higher" and micl.p_holm >= micl.p_value
    assert micl.ci_low <= micl.difference <= micl.ci_high and micl.queries == 100


def test_claims_say_why_they_are_not_judged(workbench, tmp_path):
    nothing = workbench.paper_claims("toy", tmp_path / "results")
    assert not nothing.judged and "No reproduction of 'toy'" in nothing.note
    _write_reproduction(tmp_path / "results" / "old", "toy", superseded=True)
    old = workbench.paper_claims("toy", tmp_path / "results")
    assert not old.judged and old.superseded and "no per-query ranks" in old.note and "superseded" in old.note
    assert PAPER_K == 10


def test_the_current_reproduction_is_not_marked_superseded_by_the_summary_above_it(workbench, tmp_path):
    """The repository's layout: results/ablation.json with its report as results/REPRODUCTION.md, under a
    hand-written RESULTS.md whose opening links the superseded table. The word in the summary's link must
    not mark the current reproduction superseded."""
    hits = {("basic", "both"): 40, ("basic", "text"): 40, ("micl", "both"): 60}
    folder = tmp_path / "repo" / "results"
    _write_reproduction(folder, "toy", _per_query(100, hits))
    (folder / "REPRODUCTION.md").write_text("# Reproducing NoteLLM-2's findings on `toy`\n")
    (folder.parent / "RESULTS.md").write_text("# Results\n\nThe old table is kept in results/superseded-x/.\n")
    claims = workbench.paper_claims("toy", folder)
    assert claims.judged and not claims.superseded
