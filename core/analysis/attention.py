"""Where the embedding token looks: its attention on the visual tokens, per layer, and pushed back through
the connector onto the vision patch grid as a heat map over the note's image."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from core.analysis.capture import analysis_attention
from core.data.schema import Note
from core.errors import WorkbenchError
from core.models.prompts import IMAGE_TOKEN
from core.models.vision import open_image


def _layer_selection(count: int, layers) -> list[int]:
    if layers is None or layers == "all":
        return list(range(count))
    if layers == "last":
        return [count - 1]
    chosen = [int(layer) % count for layer in layers]
    if not chosen:
        raise WorkbenchError("choose at least one layer for the heat map")
    return chosen


def token_to_patch_map(model, vision) -> np.ndarray:
    """(num_visual_tokens, patches): how each visual token draws on the patches, rows summing to 1.

    Q-Former: its cross-attention weights, averaged over heads and over its cross-attention layers, the pooled
    key (index 0) dropped and each row renormalised over the patches. MLP connector: token 0 is the pooled
    feature (spread evenly over the patches), token i > 0 is patch i - 1."""
    rows, cols = vision.grid
    patches = rows * cols
    _, cross = model.connector(vision.pooled.float(), vision.patches.float(), return_attention=True)
    if cross:
        mapping = torch.stack([weights[0].float().mean(dim=0) for weights in cross]).mean(dim=0)[:, 1:]
        mapping = mapping / mapping.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return mapping.cpu().numpy()
    mapping = np.zeros((model.connector.num_tokens, patches))
    mapping[0] = 1.0 / patches
    mapping[1:] = np.eye(patches)
    return mapping


def heat_overlay(image: Image.Image, heatmap: np.ndarray, strength: float = 0.7) -> Image.Image:
    """The heat map stretched over the whole picture (bilinear) and painted on it for the eye: contrast-stretched
    from its minimum to its maximum, coloured red (low) to yellow (high) with an opacity that grows with the
    value, so cold regions leave the picture visible. The numbers live in `heatmap`; this is only a view."""
    low, high = float(heatmap.min()), float(heatmap.max())
    scaled = (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)
    grey = Image.fromarray(np.uint8(np.clip(scaled, 0, 1) * 255)).resize(image.size, Image.BILINEAR)
    value = np.asarray(grey, dtype=np.float32)[..., None] / 255.0
    colour = np.concatenate([np.ones_like(value), np.clip(2 * value - 1, 0, 1), np.zeros_like(value)], -1) * 255
    alpha = strength * (0.15 + 0.85 * value)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray(np.uint8(np.clip(base * (1 - alpha) + colour * alpha, 0, 255)))


def image_attention(model, note: Note, image_size: int | tuple[int, int] | None = None,
                    layers: str | Sequence[int] = "all") -> dict:
    """Attention of the embedding token on the image, for one note.

    Returns a dict:
      per_layer        (layers,) share of the n_m token's attention mass (softmax weights, head-averaged) that
                       falls on the visual tokens, in each LLM layer
      per_layer_visual (layers,) the same from the n_v token under mICL, else None
      token_attention  (layers, num_visual_tokens) the n_m token's head-averaged attention on each visual token
      heatmap          (rows, cols) of the vision patch grid, row-major as the tower emits it, summing to 1:
                       token_attention averaged over `layers` ("all" by default, "last", or a list of layer
                       indices) and renormalised over the visual tokens, then pushed back to the patches
                       through `token_to_patch_map` (the Q-Former's cross-attention, head- and layer-averaged,
                       pooled key dropped, rows renormalised): heat[p] = sum_q w_q C[q, p]
      overlay          PIL image: the heat map blended on the note's picture (resized to `image_size`, an int
                       for a square or (width, height), when given), or None when the note has no readable
                       image. The grid is stretched over the whole picture, which is exact for towers that
                       resize without cropping (EfficientNet-Lite0); a CLIP-style processor's centre crop
                       means the map covers the central square.
      grid, num_visual_tokens, layers_used  for labelling plots

    Raises WorkbenchError for a variant with no image tokens in the prompt (text, late)."""
    if model.connector is None:
        raise WorkbenchError(f"variant {model.variant!r} has no image tokens in the LLM prompt: "
                             f"there is no attention on the image to show")
    batch = model.collate([note])
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            vision, has_image = model.image_features(batch["images"])
            with analysis_attention(model.llm, record_weights=True) as recorder:
                model(batch, vision=vision, has_image=has_image)
            mapping = token_to_patch_map(model, vision)
    finally:
        model.train(was_training)
    visual = (batch["input_ids"][0] == IMAGE_TOKEN).nonzero().flatten().numpy()
    final = int(batch["last_index"][0])
    weights = [layer[0].mean(dim=0).cpu().numpy() for layer in recorder.weights]  # (T, T) per layer, heads averaged
    token_attention = np.stack([w[final, visual] for w in weights])
    per_layer = token_attention.sum(axis=1)
    per_layer_visual = None
    visual_index = int(batch["visual_index"][0])
    if visual_index >= 0:
        per_layer_visual = np.array([w[visual_index, visual].sum() for w in weights])
    used = _layer_selection(len(weights), layers)
    token_weights = token_attention[used].mean(axis=0)
    token_weights = token_weights / max(token_weights.sum(), 1e-12)
    heat = token_weights @ mapping
    heat = heat / max(heat.sum(), 1e-12)
    rows, cols = vision.grid
    heatmap = heat.reshape(rows, cols)
    overlay = None
    picture = open_image(note.image) if bool(has_image[0]) else None
    if picture is not None:
        if image_size is not None:
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            picture = picture.resize(size, Image.BICUBIC)
        overlay = heat_overlay(picture, heatmap)
    return {"per_layer": per_layer, "per_layer_visual": per_layer_visual, "token_attention": token_attention,
            "heatmap": heatmap, "overlay": overlay, "grid": (rows, cols), "num_visual_tokens": len(visual),
            "layers_used": used}
