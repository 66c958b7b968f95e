"""The compiled encode path (torch.compile of core/models/fast_decoder.forward, lengths bucketed) gives the
eager vectors, and keeps inductor's cache in the workspace. Slow: inductor compiles C++ kernels (a minute
or more on 2 CPU cores), hence integration."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from core.encode import encode_notes
from core.models.note_encoder import NoteEncoder, NoteEncoderConfig
from tests.unit.model_fixtures import sample_notes

pytestmark = pytest.mark.integration


def test_compiled_encode_matches_eager_and_caches_in_the_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset")  # recorded, so the test leaves the variable as it was
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    torch.manual_seed(0)
    model = NoteEncoder(NoteEncoderConfig.tiny("micl+late")).eval()
    notes = sample_notes()
    eager = encode_notes(model, notes, batch_size=4, workspace_root=tmp_path)
    compiled = encode_notes(model, notes, batch_size=4, workspace_root=tmp_path, compile=True)
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
    assert not model.compile_inference  # interactive use after a compiled job stays eager
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cache" / "inductor").resolve())
    assert any((tmp_path / "cache" / "inductor").iterdir())
