"""Int8 storage of shipped checkpoints: bounded error on large matrices, everything else untouched."""
import torch

from core.models.compact import SCALE_SUFFIX, dequantize_state, quantize_state


def test_large_matrices_round_trip_within_half_a_step_per_row():
    torch.manual_seed(0)
    weight = torch.randn(64, 128) * torch.logspace(-3, 1, 64).unsqueeze(1)  # rows of very different size
    state = {"layer.weight": weight, "layer.bias": torch.randn(64), "scale": torch.tensor(2.5),
             "calibrated": torch.tensor(True)}
    packed = quantize_state(state)
    assert packed["layer.weight"].dtype == torch.int8 and SCALE_SUFFIX.join(["layer.weight", ""]) in packed
    assert torch.equal(packed["layer.bias"], state["layer.bias"]) and torch.equal(packed["calibrated"], state["calibrated"])
    restored = dequantize_state(packed)
    assert set(restored) == set(state)
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert torch.all((restored["layer.weight"] - weight).abs() <= step * (0.5 + 1e-4))


def test_a_plain_state_is_returned_unchanged():
    state = {"w": torch.randn(100, 100)}
    assert dequantize_state(state) is state
