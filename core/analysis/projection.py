"""2-D maps of embedding sets: UMAP (umap-learn), cached on disk, and two maps aligned note by note.

umap-learn compiles with numba on first use (about 10 s) and a fit takes seconds more, so every map is
cached under `cache_dir` by `key` plus a hash of the vectors and the settings: the same request returns the
same coordinates without recomputing. With a fixed seed UMAP runs single-threaded and is deterministic.

Alignment (`aligned_projections`): UMAP of each set separately, then the second map is fitted onto the
first by orthogonal Procrustes (rotation/reflection, uniform scale and translation; rows are matched because
row i is the same note in both sets). AlignedUMAP was not used: it fits both sets jointly and is several
times slower, and Procrustes leaves each map exactly the one `project` shows on its own.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np

from core.errors import WorkbenchError

METHODS = ("umap", "pca")
# Above this many points UMAP is fitted on a seeded sample of this size and every other point is placed from
# its nearest sample points: a fit grows faster than linearly with N and umap-learn's own `transform` took
# 74 s per 100k points here, so a million is mapped in about the time of the sample's fit plus a k-NN search.
FIT_SAMPLE = 5_000
PLACE_RANK = 64  # the k-NN search for placement runs in the sample's top principal directions


def _pca(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    if centred.shape[0] < 2:
        return np.zeros((centred.shape[0], 2))
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ components[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    # A fixed sign per axis, so the same input always gives the same picture.
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), range(2)])
    return coords * np.where(signs == 0, 1, signs)


def compute_projection(vectors: np.ndarray, seed: int = 0, method: str = "umap", n_neighbors: int = 15,
                       min_dist: float = 0.1, n_epochs: int | None = None, metric: str = "cosine",
                       fit_size: int = FIT_SAMPLE) -> np.ndarray:
    """(N, 2) float32 coordinates, uncached. Sets too small for UMAP's neighbour graph (N <= 4) use PCA; sets
    larger than `fit_size` are fitted on a sample and the rest placed (`place_by_neighbours`)."""
    if method not in METHODS:
        raise WorkbenchError(f"projection method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "pca" or len(vectors) <= 4:
        return _pca(np.asarray(vectors, dtype=np.float32)).astype(np.float32)
    if len(vectors) > fit_size:
        return _sampled_umap(vectors, seed, fit_size, n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs,
                             metric=metric)
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, len(vectors) - 1)), min_dist=min_dist,
                        metric=metric, random_state=seed, n_epochs=n_epochs, init="spectral")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # a fixed seed means one thread; expected
        return np.asarray(reducer.fit_transform(vectors), dtype=np.float32)


def _sampled_umap(vectors: np.ndarray, seed: int, fit_size: int, **settings) -> np.ndarray:
    """UMAP of a seeded sample; every other point placed among its nearest sample points. The sample keeps the
    coordinates of its own fit, so the map of the sample is exactly what `project` shows for it alone."""
    count = len(vectors)
    rows = np.sort(np.random.default_rng(seed).choice(count, fit_size, replace=False))
    sample = np.asarray(vectors[rows], dtype=np.float32)
    sample_coords = compute_projection(sample, seed=seed, method="umap", fit_size=fit_size, **settings)
    coords = np.empty((count, 2), dtype=np.float32)
    coords[rows] = sample_coords
    rest = np.ones(count, dtype=bool)
    rest[rows] = False
    placed = np.flatnonzero(rest)
    placer = NeighbourPlacer(sample, sample_coords, settings.get("n_neighbors", 15), settings.get("metric", "cosine"))
    for start in range(0, len(placed), 200_000):  # a memmapped corpus is read a slice at a time
        chunk = placed[start:start + 200_000]
        coords[chunk] = placer.place(np.asarray(vectors[chunk], dtype=np.float32))
    return coords


def place_by_neighbours(sample: np.ndarray, sample_coords: np.ndarray, vectors: np.ndarray, k: int = 15,
                        metric: str = "cosine") -> np.ndarray:
    """(len(vectors), 2): each point at the weighted mean of its k nearest sample points' coordinates, nearer
    ones weighing more (how umap-learn's `transform` starts before its refinement epochs, which cost more than
    they move a point on a map this size). Neighbours are found by faiss (IVF) in the sample's top principal
    directions, which keeps a million queries to seconds."""
    return NeighbourPlacer(sample, sample_coords, k, metric).place(vectors)


class NeighbourPlacer:
    """The sample's principal directions and k-NN index, built once and applied to any number of chunks."""

    def __init__(self, sample: np.ndarray, sample_coords: np.ndarray, k: int = 15, metric: str = "cosine"):
        import faiss

        self.k, self.metric, self.coords = max(1, min(k, len(sample))), metric, sample_coords
        sample = self._normalised(np.asarray(sample, dtype=np.float32))
        self.mean = sample.mean(axis=0, keepdims=True)
        rank = min(PLACE_RANK, sample.shape[1], len(sample))
        # Principal directions from the d x d covariance (an SVD of the sample itself took seconds here).
        _, eigenvectors = np.linalg.eigh(np.cov((sample - self.mean).T.astype(np.float64)))
        self.basis = np.ascontiguousarray(eigenvectors[:, ::-1][:, :rank], dtype=np.float32)
        reduced = np.ascontiguousarray((sample - self.mean) @ self.basis, dtype=np.float32)
        if len(sample) >= 64 * 39:
            # Scanning every sample point per query was the slow part (5k x 1M); 64 cells, 6 probed, find
            # 0.96-0.99 of the exact neighbours, and a placement averages 15 of them anyway.
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(rank), rank, 64)
            self.index.train(reduced)
            self.index.nprobe = 6
        else:
            self.index = faiss.IndexFlatL2(rank)
        self.index.add(reduced)

    def _normalised(self, vectors: np.ndarray) -> np.ndarray:
        if self.metric != "cosine":
            return vectors
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def place(self, vectors: np.ndarray) -> np.ndarray:
        vectors = self._normalised(np.asarray(vectors, dtype=np.float32))
        distances, found = self.index.search(np.ascontiguousarray((vectors - self.mean) @ self.basis,
                                                                  dtype=np.float32), self.k)
        short = found < 0  # a query short of k neighbours repeats its nearest
        found, distances = np.where(short, found[:, :1], found), np.where(short, distances[:, :1], distances)
        distances = np.sqrt(np.maximum(distances, 0))
        # A kernel scaled per point by its own neighbour distances (UMAP's local-connectivity idea).
        spread = np.maximum(distances[:, -1:] - distances[:, :1], 1e-6)
        weights = np.exp(-(distances - distances[:, :1]) / spread)
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkc->nc", weights, self.coords[found]).astype(np.float32)


def _cache_path(cache_dir: Path, key: str | None, vectors: np.ndarray, settings: dict) -> Path:
    digest = hashlib.sha1()
    digest.update(str(vectors.shape).encode())
    for start in range(0, len(vectors), 65_536):
        digest.update(np.ascontiguousarray(vectors[start:start + 65_536]).tobytes())
    digest.update(repr(sorted(settings.items())).encode())
    if len(vectors) > FIT_SAMPLE:  # a sampled map depends on the sample size too
        digest.update(f"fit={FIT_SAMPLE}".encode())
    safe_key = re.sub(r"[^A-Za-z0-9._-]+", "_", key or "vectors")[:80]
    return Path(cache_dir) / f"{safe_key}-{digest.hexdigest()[:16]}.npy"


def _as_matrix(vectors) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or len(matrix) == 0:
        raise WorkbenchError(f"expected a non-empty (N, dim) array of vectors, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise WorkbenchError("the vectors contain NaN or infinite values")
    return matrix


def project(vectors: np.ndarray, cache_dir: Path | None = None, key: str | None = None, seed: int = 0,
            method: str = "umap", *, n_neighbors: int = 15, min_dist: float = 0.1, n_epochs: int | None = None,
            metric: str = "cosine") -> np.ndarray:
    """(N, 2) float32 map of `vectors`; with `cache_dir`, read from / written to
    `cache_dir/<key>-<hash of vectors and settings>.npy`."""
    matrix = _as_matrix(vectors)
    settings = dict(seed=seed, method=method, n_neighbors=n_neighbors, min_dist=min_dist, n_epochs=n_epochs,
                    metric=metric)
    path = _cache_path(cache_dir, key, matrix, settings) if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            cached = np.load(path)
            if cached.shape == (len(matrix), 2):
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed and overwritten
    coords = compute_projection(matrix, seed=seed, method=method, n_neighbors=n_neighbors, min_dist=min_dist,
                                n_epochs=n_epochs, metric=metric)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp.npy")
        np.save(temporary, coords)
        temporary.replace(path)  # atomic: a reader never sees half a file
    return coords


def procrustes_align(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """`moving` rotated/reflected, uniformly scaled and translated to best fit `reference` (least squares)."""
    ref_mean, mov_mean = reference.mean(axis=0), moving.mean(axis=0)
    ref, mov = reference - ref_mean, moving - mov_mean
    u, singular, vt = np.linalg.svd(mov.T @ ref)
    rotation = u @ vt
    norm = (mov ** 2).sum()
    scale = singular.sum() / norm if norm > 0 else 1.0
    return (mov @ rotation * scale + ref_mean).astype(np.float32)


def aligned_projections(vectors_a: np.ndarray, vectors_b: np.ndarray, cache_dir: Path | None = None,
                        key: str | None = None, seed: int = 0, **umap_settings) -> tuple[np.ndarray, np.ndarray]:
    """(coords_a, coords_b), each (N, 2): row i of both sets is the same note. coords_a is `project(vectors_a)`;
    coords_b is `project(vectors_b)` Procrustes-aligned onto it (the vectors may differ in width)."""
    a, b = _as_matrix(vectors_a), _as_matrix(vectors_b)
    if len(a) != len(b):
        raise WorkbenchError(f"aligned maps need the same notes in both sets: {len(a)} vs {len(b)} vectors")
    base = key or "aligned"
    coords_a = project(a, cache_dir, f"{base}-a", seed, **umap_settings)
    coords_b = project(b, cache_dir, f"{base}-b", seed, **umap_settings)
    return coords_a, procrustes_align(coords_a, coords_b)
