"""Projections: cached by key and content, and aligned maps that put identical inputs in identical places.
Real UMAP (numba compile, ~20 s) is exercised in tests/integration/test_analysis_real.py; here the compute
step is replaced where only the caching is under test."""
from __future__ import annotations

import numpy as np
import pytest

from core.analysis import projection
from core.analysis.projection import aligned_projections, procrustes_align, project
from core.errors import WorkbenchError


def vectors(n=30, dim=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_cache_returns_the_same_coordinates_without_recomputing(tmp_path, monkeypatch):
    calls = []

    def fake_compute(matrix, **settings):
        calls.append(settings)
        return np.random.default_rng(len(calls)).normal(size=(len(matrix), 2)).astype(np.float32)

    monkeypatch.setattr(projection, "compute_projection", fake_compute)
    first = project(vectors(), cache_dir=tmp_path, key="run-a/sample", seed=3)
    assert len(calls) == 1 and calls[0]["method"] == "umap" and calls[0]["seed"] == 3

    monkeypatch.setattr(projection, "compute_projection", lambda *a, **k: pytest.fail("recomputed a cached map"))
    again = project(vectors(), cache_dir=tmp_path, key="run-a/sample", seed=3)
    assert np.array_equal(first, again)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    monkeypatch.setattr(projection, "compute_projection", fake_compute)
    project(vectors(seed=1), cache_dir=tmp_path, key="run-a/sample", seed=3)  # other vectors: a new map
    project(vectors(), cache_dir=tmp_path, key="run-a/sample", seed=4)  # other seed: a new map
    assert len(calls) == 3


def test_aligned_projections_place_identical_inputs_identically(tmp_path):
    a, b = aligned_projections(vectors(), vectors().copy(), method="pca")
    assert np.allclose(a, b, atol=1e-5)
    assert a.shape == (30, 2)


def test_procrustes_undoes_rotation_scale_and_shift():
    reference = vectors(20, 2)
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = reference @ rotation * 3.0 + np.array([5.0, -2.0])
    assert np.allclose(procrustes_align(reference, moved), reference, atol=1e-4)


def test_small_sets_and_bad_input():
    assert project(vectors(3), method="umap").shape == (3, 2)  # too small for UMAP: PCA
    with pytest.raises(WorkbenchError):
        project(np.full((5, 3), np.nan))
    with pytest.raises(WorkbenchError):
        aligned_projections(vectors(10), vectors(11))
    with pytest.raises(WorkbenchError):
        project(vectors(), method="tsne")


def test_large_sets_are_fitted_on_a_sample_and_the_rest_placed_near_their_neighbours():
    from core.analysis.projection import compute_projection, place_by_neighbours

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    labels = rng.integers(4, size=900)
    vectors = (centres[labels] + rng.normal(size=(900, 16))).astype(np.float32)
    coords = compute_projection(vectors, seed=0, n_epochs=60, fit_size=150)
    assert coords.shape == (900, 2) and np.isfinite(coords).all()
    rows = np.sort(np.random.default_rng(0).choice(900, 150, replace=False))
    # The sample keeps the coordinates of its own fit.
    assert np.allclose(coords[rows], compute_projection(vectors[rows], seed=0, n_epochs=60, fit_size=150))
    # Every placed point lands among sample points of its own cluster.
    placed = np.setdiff1d(np.arange(900), rows)
    nearest = np.argmin(((coords[placed, None] - coords[rows][None]) ** 2).sum(-1), axis=1)
    assert (labels[rows][nearest] == labels[placed]).mean() > 0.95
    # A point equal to a sample point sits on it.
    assert np.allclose(place_by_neighbours(vectors[rows], coords[rows], vectors[rows[:3]], k=1), coords[rows[:3]])
