"""Late-fusion gate shares: 0.5 at the zero initialisation, strictly inside (0, 1) otherwise, and 1 for a note
without a picture (nothing to fuse)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.analysis.gate import gate_shares
from core.data.schema import Note
from core.errors import WorkbenchError

try:
    from analysis_fixtures import sample_notes, tiny_model
except ImportError:
    from tests.unit.analysis_fixtures import sample_notes, tiny_model


def notes():
    return sample_notes(5) + [Note(note_id="blank", title="no picture")]


def test_zero_initialised_gate_gives_one_half():
    frame = gate_shares(tiny_model("micl+late"), notes(), batch_size=4)
    assert list(frame.columns) == ["note_id", "llm_share", "llm_share_visual", "has_image"]
    assert frame.note_id.tolist() == [n.note_id for n in notes()]
    real = frame.has_image.to_numpy()
    assert real.tolist() == [True] * 5 + [False]
    assert np.allclose(frame.llm_share[real], 0.5) and np.allclose(frame.llm_share_visual[real], 0.5)
    # A note without a picture has nothing to fuse: the LLM state is the whole vector.
    assert np.allclose(frame.llm_share[~real], 1.0) and np.allclose(frame.llm_share_visual[~real], 1.0)


def test_trained_looking_gate_stays_inside_zero_one():
    model = tiny_model("basic+late", llm_tuning="frozen")
    with torch.no_grad():
        torch.manual_seed(0)
        model.fusion.gate.weight.normal_(0, 0.05)
    frame = gate_shares(model, notes(), batch_size=16)
    real = frame.has_image.to_numpy()
    shares = frame.llm_share.to_numpy()[real]
    assert ((shares > 0) & (shares < 1)).all() and not np.allclose(shares, 0.5)
    assert np.allclose(frame.llm_share.to_numpy()[~real], 1.0)
    assert frame.llm_share_visual.isna().all()


def test_model_without_late_fusion_is_refused():
    with pytest.raises(WorkbenchError, match="late-fusion"):
        gate_shares(tiny_model("micl"), notes())
