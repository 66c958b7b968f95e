"""Saliency per layer on tiny models: finite everywhere, exactly zero on the image when the image is masked
out of attention, and the LLM's attention implementation put back afterwards."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.analysis.capture import analysis_attention
from core.analysis.saliency import _layer_values, image_span, pair_contrastive_loss, saliency_by_layer
from core.errors import WorkbenchError
from core.models.prompts import IMAGE_TOKEN, SLOT_TOKEN

try:
    from analysis_fixtures import sample_notes, sample_pairs, tiny_model
except ImportError:
    from tests.unit.analysis_fixtures import sample_notes, sample_pairs, tiny_model


@pytest.mark.parametrize("variant", ["micl+late", "basic"])
def test_saliency_is_finite_for_every_layer_and_zero_on_a_masked_image(variant):
    model = tiny_model(variant)
    layers = model.llm.config.num_hidden_layers
    calls = []
    frame = saliency_by_layer(model, sample_pairs(4), batch_pairs=2, progress=lambda d, t: calls.append((d, t)))
    assert list(frame.columns) == ["layer", "S_v", "S_t", "S_o", "S_visual", "S_slot", "n_batches"]
    assert frame.layer.tolist() == list(range(layers))
    assert np.isfinite(frame[["S_v", "S_t", "S_o"]].to_numpy()).all()
    assert (frame[["S_v", "S_t"]] > 0).all().all()
    assert (frame.n_batches == 2).all() and calls == [(1, 2), (2, 2)]

    masked = saliency_by_layer(model, sample_pairs(4), batch_pairs=2, mask_image_tokens=True)
    assert (masked.S_v == 0).all()
    assert np.isfinite(masked.S_t).all() and (masked.S_t > 0).all()
    assert model.llm.config._attn_implementation == "sdpa"


def test_post_softmax_multiplier_and_max_batches():
    frame = saliency_by_layer(tiny_model("basic"), sample_pairs(4), batch_pairs=2, max_batches=1,
                              multiplier="post_softmax")
    assert (frame.n_batches == 1).all() and np.isfinite(frame[["S_v", "S_t", "S_o"]].to_numpy()).all()


def test_text_variant_has_no_image_saliency_and_too_few_pairs_is_an_error():
    frame = saliency_by_layer(tiny_model("text"), sample_pairs(2), batch_pairs=2)
    assert frame.S_v.isna().all() and np.isfinite(frame.S_t).all()
    with pytest.raises(WorkbenchError):
        saliency_by_layer(tiny_model("text"), sample_pairs(1))


def test_saliency_leaves_parameter_gradients_alone():
    model = tiny_model("micl+late")
    saliency_by_layer(model, sample_pairs(2), batch_pairs=2)
    assert all(p.grad is None for p in model.parameters())


def test_image_span_runs_through_the_slot_under_micl():
    ids = torch.tensor([[5, IMAGE_TOKEN, IMAGE_TOKEN, 7, 8, SLOT_TOKEN, 9, 10],
                        [5, 6, IMAGE_TOKEN, IMAGE_TOKEN, 7, SLOT_TOKEN, 9, 0]])
    assert image_span(ids).int().tolist() == [[0, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0]]
    basic = torch.tensor([[5, IMAGE_TOKEN, IMAGE_TOKEN, 7]])
    assert image_span(basic).int().tolist() == [[0, 1, 1, 0]]


def test_pair_loss_targets_the_partner():
    aligned = torch.eye(4)[[0, 1, 0, 1]] + 0.01 * torch.eye(4)  # rows 0/2 and 1/3 are pairs
    wrong = torch.eye(4)[[0, 1, 1, 0]]
    assert pair_contrastive_loss(aligned) < pair_contrastive_loss(wrong)


def test_analysis_attention_matches_the_model_and_is_restored():
    model = tiny_model("micl+late")
    model.eval()
    batch = model.collate(sample_notes(3))
    with torch.no_grad():
        plain = model(batch).embedding
        with analysis_attention(model.llm, record_weights=True) as recorder:
            analysed = model(batch).embedding
    assert torch.allclose(plain, analysed, atol=1e-5)
    assert len(recorder.weights) == model.llm.config.num_hidden_layers
    assert model.llm.config._attn_implementation == "sdpa"


def test_visual_token_saliency_leaves_out_the_slot_and_its_instruction():
    # One mICL note: text, 2 visual tokens, 2 instruction tokens, the slot, 2 text tokens; the final token
    # (position 7) gives each earlier key the saliency written below.
    ids = torch.tensor([[5, IMAGE_TOKEN, IMAGE_TOKEN, 7, 8, SLOT_TOKEN, 9, 10]])
    saliency = torch.zeros(1, 8, 8)
    saliency[0, 7, :7] = torch.tensor([1.0, 2.0, 4.0, 10.0, 20.0, 30.0, 3.0])
    saliency[0, 3, 1] = 6.0  # one pair not from the final token
    valid = torch.ones(1, 8, dtype=torch.bool)
    values = _layer_values(saliency, valid, image_span(ids), torch.tensor([7]), ids == IMAGE_TOKEN)[0]
    s_v, s_t, s_o, s_visual, s_slot = values
    assert s_v == pytest.approx((2 + 4 + 10 + 20 + 30) / 5)  # the whole image span, as before
    assert s_t == pytest.approx((1 + 3) / 2)
    assert s_visual == pytest.approx((2 + 4) / 2)  # the visual tokens alone
    assert s_slot == pytest.approx((10 + 20 + 30) / 3)  # instruction + slot
    assert s_o == pytest.approx(6.0 / 21)  # 21 causal pairs with a query other than the final token
    # Without mICL the span is the visual tokens: S_visual is S_v and there is no slot to measure.
    basic = torch.tensor([[5, IMAGE_TOKEN, IMAGE_TOKEN, 7, 8, 6, 9, 10]])
    values = _layer_values(saliency, valid, image_span(basic), torch.tensor([7]), basic == IMAGE_TOKEN)[0]
    assert values[3] == values[0] == pytest.approx(3.0) and np.isnan(values[4])


@pytest.mark.parametrize("variant", ["micl", "basic"])
def test_saliency_frames_split_the_span_into_visual_tokens_and_slot(variant):
    frame = saliency_by_layer(tiny_model(variant), sample_pairs(4), batch_pairs=2)
    assert np.isfinite(frame.S_visual).all() and (frame.S_visual > 0).all()
    per_batch = np.array(frame.attrs["per_batch"], dtype=float)  # batches x layers x measures
    assert per_batch.shape == (2, len(frame), 5) and frame.attrs["measures"][3] == "S_visual"
    assert np.allclose(per_batch[:, :, 3].mean(0), frame.S_visual)
    if variant == "micl":
        assert np.isfinite(frame.S_slot).all()
        # S_v over the whole span lies between its two parts' means.
        low = np.minimum(frame.S_visual, frame.S_slot) - 1e-12
        high = np.maximum(frame.S_visual, frame.S_slot) + 1e-12
        assert ((frame.S_v >= low) & (frame.S_v <= high)).all()
    else:
        assert frame.S_slot.isna().all() and np.allclose(frame.S_visual, frame.S_v)
