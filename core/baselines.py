"""Zero-shot baselines, encodable and evaluable exactly like trained runs (`.encode(notes, batch_size,
modality, progress) -> float32 (N, d)`, L2-normalised):

    zs-text    frozen all-MiniLM-L6-v2 (sentence-transformers) on title + topics + content
    zs-image   the frozen vision tower's pooled feature (offline EfficientNet-Lite0)
    zs-concat  both, each L2-normalised, concatenated and renormalised
    zs-llm     an untrained NoteEncoder (micl+late, offline backbones), built from a fixed seed and calibrated
               on fixed notes, so every process builds the same one

Modality ablation as for runs: "image" empties the text, "text" replaces the image by a zero image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from core.data.schema import Note
from core.errors import WorkbenchError

ZERO_SHOT = ("zs-text", "zs-image", "zs-concat", "zs-llm")
ZERO_SHOT_VERSION = "1"
ZS_LLM_SEED = 1234


def _normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def note_text(note: Note) -> str:
    parts = [note.title, " ".join(f"#{t}" for t in note.topics), note.content]
    return ". ".join(p.strip() for p in parts if p and p.strip())


class ZeroShotText:
    name = "zs-text"

    def __init__(self, device: str | torch.device = "cpu"):
        from sentence_transformers import SentenceTransformer

        from core.models import provision

        self.model = SentenceTransformer(str(provision.minilm_folder()), device=str(device))
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = dimension()

    def encode(self, notes: Sequence[Note], batch_size: int = 32, modality: str = "both", progress=None) -> np.ndarray:
        texts = ["" if modality == "image" else note_text(note) for note in notes]
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            out[start:start + len(chunk)] = self.model.encode(chunk, batch_size=batch_size, normalize_embeddings=True,
                                                              convert_to_numpy=True, show_progress_bar=False)
            if progress is not None:
                progress(start + len(chunk), len(texts))
        return out


class ZeroShotImage:
    name = "zs-image"

    def __init__(self, device: str | torch.device = "cpu", workspace_root=None, vision: str | None = None):
        from core.features import VisionFeatureCache
        from core.models import provision
        from core.models.vision import load_vision_tower

        self.tower = load_vision_tower(vision or provision.OFFLINE_VISION).to(device).to(torch.bfloat16)
        self.tower.requires_grad_(False)
        self.features = VisionFeatureCache(workspace_root, self.tower)

    def encode(self, notes: Sequence[Note], batch_size: int = 32, modality: str = "both", progress=None) -> np.ndarray:
        images = [None if modality == "text" else note.image for note in notes]
        out = []
        for start in range(0, len(images), batch_size):
            features, _ = self.features(images[start:start + batch_size])
            out.append(features.pooled.float().numpy())
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
        return _normalise(np.concatenate(out)) if out else np.zeros((0, self.tower.width), np.float32)


class ZeroShotConcat:
    name = "zs-concat"

    def __init__(self, text: ZeroShotText, image: ZeroShotImage):
        self.text, self.image = text, image

    def encode(self, notes, batch_size: int = 32, modality: str = "both", progress=None) -> np.ndarray:
        text = self.text.encode(notes, batch_size, modality)
        image = self.image.encode(notes, batch_size, modality, progress)
        return _normalise(np.concatenate([_normalise(text), _normalise(image)], axis=1))


_CALIBRATION_NOTES = [Note(str(i), title=t, content=c) for i, (t, c) in enumerate([
    ("A red bird", "a small red bird on a branch"), ("Blue car", "a blue car on the road"),
    ("Green tree", "a tall green tree in a park"), ("Music", "notes and a guitar"),
])]


def zero_shot_llm(device: str | torch.device = "cpu"):
    """The untrained NoteLLM-2 (micl+late) with the offline backbones, reproducible from its seed."""
    from core.models.note_encoder import NoteEncoder, NoteEncoderConfig

    torch.manual_seed(ZS_LLM_SEED)
    model = NoteEncoder(NoteEncoderConfig.for_variant("micl+late", llm_tuning="frozen"), device=device)
    model.eval()
    with torch.inference_mode():
        model(model.collate(_CALIBRATION_NOTES))  # fixes the late-fusion calibration, independent of the data
    return model


def load_zero_shot(name: str, device: str | torch.device = "cpu", workspace_root=None):
    if name == "zs-text":
        return ZeroShotText(device)
    if name == "zs-image":
        return ZeroShotImage(device, workspace_root)
    if name == "zs-concat":
        return ZeroShotConcat(ZeroShotText(device), ZeroShotImage(device, workspace_root))
    if name == "zs-llm":
        return zero_shot_llm(device)
    raise WorkbenchError(f"unknown zero-shot baseline {name!r}; choose one of {', '.join(ZERO_SHOT)}")
