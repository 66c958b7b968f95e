"""Indexes chosen by size and tuned to a recall target on clustered vectors like real note embeddings."""
import numpy as np
import pytest

from core.index import (EXACT_THRESHOLD, VectorIndex, build_index, choose_kind, exact_neighbours, mixture_like)


def clustered(count: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(clusters, size=count)] + 0.6 * rng.normal(size=(count, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_kind_follows_size_and_memory():
    assert choose_kind(EXACT_THRESHOLD - 1, 384) == "flat"
    assert choose_kind(EXACT_THRESHOLD, 384) == "ivf"
    assert choose_kind(1_000_000, 384, memory_budget=1024 ** 3) == "ivfpq"
    assert VectorIndex(["a", "b"], clustered(2), kind="auto").kind == "flat"
    with pytest.raises(ValueError):
        VectorIndex(["a"], clustered(1), kind="lsh")


def test_exact_neighbours_leave_the_query_out():
    vectors = clustered(500)
    rows, sample, truth = exact_neighbours(vectors, 20, 5)
    scores = sample @ vectors.T
    scores[np.arange(len(rows)), rows] = -np.inf
    assert all(r not in t for r, t in zip(rows, truth))
    assert np.array_equal(np.sort(truth, 1), np.sort(np.argsort(-scores, 1)[:, :5], 1))


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_tuning_reaches_the_recall_target(kind):
    vectors = clustered(4000)
    index = build_index([f"n{i}" for i in range(len(vectors))], vectors, kind=kind, target=0.95)
    assert index.kind == kind and index.tuning["recall@10"] >= 0.95
    if kind != "hnsw":
        assert index.breadth <= index.nlist
    # The tuned figure is what search then delivers (on other queries too).
    rows, sample, truth = exact_neighbours(vectors, 100, 10, seed=5)
    assert index.recall_at(sample, rows, truth, vectors=vectors) >= 0.9
    top = index.search(vectors[:1], 5, exclude=[{"n0"}])[0]
    assert len(top) == 5 and "n0" not in [i for i, _ in top]


def test_recall_counts_ties_with_the_kth_exact_score_as_found():
    base = clustered(200)
    vectors = np.concatenate([base, base])  # every note twice: which copy fills the 10th place is arbitrary
    index = VectorIndex([str(i) for i in range(400)], vectors, kind="ivf", nlist=4, nprobe=4)
    rows, sample, truth = exact_neighbours(vectors, 50, 10)
    assert index.recall_at(sample, rows, truth, vectors=vectors) == 1.0


def test_pq_tuning_rescores_more_candidates_when_more_cells_stop_helping(monkeypatch):
    import core.index

    monkeypatch.setattr(core.index, "PQ_RERANK", 1)
    vectors = clustered(3000, clusters=3)
    index = build_index([str(i) for i in range(3000)], vectors, kind="ivfpq", target=0.99, nlist=8)
    assert index.rerank > 1 and any("x" in step for step in index.tuning["tried"])
    assert index.tuning["recall@10"] == max(index.tuning["tried"].values())


def test_flat_needs_no_tuning_and_keeps_its_answers():
    vectors = clustered(300)
    index = build_index([str(i) for i in range(300)], vectors)
    assert index.kind == "flat" and index.tuning["recall@10"] == 1.0
    assert [i for i, _ in index.search(vectors[:2], 3)[0]][0] == "0"


def test_mixture_like_keeps_the_structure_of_real_vectors(tmp_path):
    real = clustered(400, dim=48, clusters=8)
    fake = mixture_like(real, 2000, seed=1, rank=8)
    assert fake.shape == (2000, 48) and fake.dtype == np.float32
    assert np.allclose(np.linalg.norm(fake, axis=1), 1, atol=1e-5)
    assert np.array_equal(fake, mixture_like(real, 2000, seed=1, rank=8))
    # Clustered like the real vectors: far closer to their centroid than random directions would be.
    centre = real.mean(0)
    centre /= np.linalg.norm(centre)
    random = np.random.default_rng(0).normal(size=(2000, 48))
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    assert (fake @ centre).mean() > 0.5 * (real @ centre).mean() > (random @ centre).mean() + 0.05
    out = np.lib.format.open_memmap(tmp_path / "mixture.npy", mode="w+", dtype=np.float32, shape=(300, 48))
    mixture_like(real, 300, seed=1, rank=8, out=out, chunk=128)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
