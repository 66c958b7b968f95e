"""The contrastive loss against values computed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from core.train.loss import ContrastiveLoss, pair_targets

# Two pairs: rows [a1, a2, b1, b2]; a_i is paired with b_i.
ROWS = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (0.8, -0.6)]
PARTNER = {0: 2, 1: 3, 2: 0, 3: 1}


def hand_loss(rows, t):
    scale = math.exp(t)
    total = 0.0
    for i, u in enumerate(rows):
        logits = {j: scale * (u[0] * v[0] + u[1] * v[1]) for j, v in enumerate(rows) if j != i}
        total += -(logits[PARTNER[i]] - math.log(sum(math.exp(x) for x in logits.values())))
    return total / len(rows)


def test_loss_equals_hand_computed_value():
    loss = ContrastiveLoss(temperature_init=3.0)
    value = loss(torch.tensor(ROWS))["loss"].item()
    assert value == pytest.approx(hand_loss(ROWS, 3.0), rel=1e-5)
    # The same at another temperature: the scale is exp(t).
    loss.temperature.data.fill_(1.0)
    assert loss(torch.tensor(ROWS))["loss"].item() == pytest.approx(hand_loss(ROWS, 1.0), rel=1e-5)


def test_micl_weighting_is_nine_to_one_and_configurable():
    note = torch.tensor(ROWS)
    visual = F.normalize(torch.tensor([(1.0, 1.0), (1.0, -1.0), (0.0, 1.0), (1.0, 0.0)]), dim=-1)
    out = ContrastiveLoss()(note, visual)
    expected = (9 * out["note_loss"] + 1 * out["visual_loss"]) / 10
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    even = ContrastiveLoss(note_weight=1, visual_weight=1)(note, visual)
    assert even["loss"].item() == pytest.approx((even["note_loss"] + even["visual_loss"]).item() / 2, rel=1e-6)


def test_temperature_is_learnable_or_fixed():
    learnable = ContrastiveLoss()
    learnable(torch.tensor(ROWS, requires_grad=True))["loss"].backward()
    assert learnable.temperature.grad is not None and learnable.temperature.grad.abs() > 0
    fixed = ContrastiveLoss(learn_temperature=False)
    assert not fixed.temperature.requires_grad


def test_targets_of_gathered_shards_point_at_partners():
    # Two shards of two pairs each: [a1 a2 b1 b2 | a3 a4 b3 b4].
    assert pair_targets(8, 4).tolist() == [2, 3, 0, 1, 6, 7, 4, 5]
