"""Frozen vision features, computed once per image and kept on disk in the workspace.

The vision tower never trains, so a feature depends only on (extractor, pixels). The extractor is the
tower's fingerprint (its name, a digest of its weights, its mode and its image preprocessing), so features
written by another tower, other weights, a tower in the wrong mode or an older preprocessing are never
reused: they live in another folder. The pixels are a hash of the image file's bytes. Store images are
content-addressed already; hashing the bytes keeps the key honest for any other path too. Images given as
PIL objects (composed in the UI) are computed and not stored.

Layout: WORKSPACE/cache/vision/<tower>-<fingerprint digest>/<key[:2]>/<key>.safetensors holding pooled,
patches and has_image.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import torch

from core.models.vision import VisionFeatures

log = logging.getLogger(__name__)

_ZERO_KEY = "zero-image"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "tower"


class VisionFeatureCache:
    def __init__(self, root: str | os.PathLike | None, tower, batch_size: int = 32):
        self.tower = tower
        self.extractor = tower.fingerprint()
        extractor_digest = hashlib.sha1(self.extractor.encode()).hexdigest()[:12]
        self.folder = (Path(root) / "cache" / "vision" / f"{_slug(tower.name)}-{extractor_digest}"
                       if root is not None else None)
        self.batch_size = batch_size
        self.memory: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        self._key_of_path: dict[str, str] = {}

    def key(self, image) -> str | None:
        if image is None or (isinstance(image, str) and not image.strip()):
            return _ZERO_KEY
        if not isinstance(image, (str, os.PathLike)):
            return None  # a PIL image: no stable key
        path = str(image)
        if path not in self._key_of_path:
            try:
                digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
            except OSError:
                digest = _ZERO_KEY  # unreadable: the tower gives a zero image too
            self._key_of_path[path] = digest
        return self._key_of_path[path]

    def _file(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / key[:2] / f"{key}.safetensors"

    def _load(self, key: str):
        if key in self.memory:
            return self.memory[key]
        path = self._file(key)
        if path is None or not path.exists():
            return None
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception:  # a torn file from a killed process: recompute it
            log.warning("unreadable vision feature file %s: computing it again", path.name, exc_info=True)
            return None
        entry = (tensors["pooled"], tensors["patches"], bool(tensors["has_image"].item()))
        self.memory[key] = entry
        return entry

    def _store(self, key: str, pooled: torch.Tensor, patches: torch.Tensor, has_image: bool) -> None:
        entry = (pooled.detach().cpu().contiguous(), patches.detach().cpu().contiguous(), has_image)
        self.memory[key] = entry
        path = self._file(key)
        if path is None:
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"pooled": entry[0], "patches": entry[1], "has_image": torch.tensor([has_image])}, str(staging))
        os.replace(staging, path)  # atomic: readers see a whole file or none

    def __call__(self, images: Sequence) -> tuple[VisionFeatures, torch.Tensor]:
        """(features, has_image) for images given as paths, PIL images or None; computes only what is missing."""
        if self.tower.fingerprint() != self.extractor:
            raise RuntimeError(f"the vision tower changed after its feature cache was made "
                               f"({self.extractor} -> {self.tower.fingerprint()})")
        keys = [self.key(image) for image in images]
        entries: list = [None if key is None else self._load(key) for key in keys]
        missing = [i for i, entry in enumerate(entries) if entry is None]
        # Compute each distinct missing image once.
        todo: dict = {}
        for i in missing:
            todo.setdefault(keys[i] if keys[i] is not None else f"pil-{i}", []).append(i)
        groups = list(todo.items())
        for start in range(0, len(groups), self.batch_size):
            chunk = groups[start:start + self.batch_size]
            features, has_image = self.tower([images[rows[0]] for _, rows in chunk])
            for row, (key, rows) in enumerate(chunk):
                entry = (features.pooled[row].detach().cpu(), features.patches[row].detach().cpu(), bool(has_image[row]))
                if not key.startswith("pil-"):
                    self._store(key, *entry)
                for i in rows:
                    entries[i] = entry
        pooled = torch.stack([e[0] for e in entries])
        patches = torch.stack([e[1] for e in entries])
        return VisionFeatures(pooled, patches, self.tower.grid), torch.tensor([e[2] for e in entries])


def model_features(model, cache: VisionFeatureCache | None, images: Sequence):
    """(VisionFeatures on the model's device, has_image), or (None, None) for a text-only model."""
    if model.vision is None:
        return None, None
    if cache is None:
        return model.image_features(images)
    features, has_image = cache(images)
    return features.to(model.device), has_image
