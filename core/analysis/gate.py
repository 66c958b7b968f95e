"""The late-fusion gate as a read-out: per note, how much of the final vector comes from the LLM state (z -> 1)
versus the raw image feature (z -> 0), averaged over the state's dimensions."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from core.data.schema import Note
from core.errors import WorkbenchError


def gate_shares(model, notes: Sequence[Note], batch_size: int = 16,
                progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One row per note, in input order: note_id, llm_share (mean of z over the dimensions, for n_m),
    llm_share_visual (the same for n_v under mICL, else NaN), has_image (False where a zero image stood in).

    Summaries over a dataset are plain pandas on the result (`frame.llm_share.describe()`, a histogram).
    Raises WorkbenchError for a model without late fusion."""
    if getattr(model, "fusion", None) is None:
        raise WorkbenchError(f"variant {getattr(model, 'variant', '?')!r} has no late-fusion gate; "
                             f"choose late, basic+late or micl+late")
    notes = [note if isinstance(note, Note) else Note.from_dict(note) for note in notes]
    columns = {"note_id": [], "llm_share": [], "llm_share_visual": [], "has_image": []}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(notes), batch_size):
                chunk = notes[start:start + batch_size]
                output = model(model.collate(chunk))
                share = output.gate.float().mean(dim=-1).cpu().numpy()
                visual = (output.visual_gate.float().mean(dim=-1).cpu().numpy() if output.visual_gate is not None
                          else np.full(len(chunk), np.nan))
                has_image = (output.has_image.cpu().numpy().astype(bool) if output.has_image is not None
                             else np.ones(len(chunk), dtype=bool))
                columns["note_id"] += [note.note_id for note in chunk]
                columns["llm_share"] += share.tolist()
                columns["llm_share_visual"] += visual.tolist()
                columns["has_image"] += has_image.tolist()
                if progress is not None:
                    progress(min(start + batch_size, len(notes)), len(notes))
    finally:
        model.train(was_training)
    return pd.DataFrame(columns).astype({"llm_share": float, "llm_share_visual": float, "has_image": bool})
