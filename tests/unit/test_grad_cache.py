"""A gradient-cached step (core/train/grad_cache.py) gives the loss and every parameter gradient of the plain
full-batch step, whatever the chunk size, and the sharpness of that comparison is itself checked: a cached
gradient taken from the other side of each pair, or an RNG state left unrestored under dropout, fails it."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from core.models.note_encoder import NoteEncoder, NoteEncoderConfig
from core.train import grad_cache
from core.train.grad_cache import cached_contrastive_step, chunk_bounds
from core.train.loss import ContrastiveLoss
from core.data.schema import Note
from tests.unit.model_fixtures import picture

COLOURS = ["red", "blue", "green", "orange", "purple", "black", "yellow", "brown", "pink", "grey", "navy", "teal"]
WORDS = "bird tree car star flower music food sport map sun moon water fire cloud heart arrow sign icon".split()


def pairs(count=6):
    """`count` pairs of distinct notes of varied lengths; one note has no picture."""
    notes = []
    for i in range(2 * count):
        words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + (3 * i) % 7))
        image = None if i == 3 else picture(COLOURS[i % len(COLOURS)], "circle" if i % 2 else "square")
        notes.append(Note(f"n{i}", f"{COLOURS[i % len(COLOURS)]} {WORDS[i % len(WORDS)]}", words, [], image))
    return [(notes[2 * i], notes[2 * i + 1]) for i in range(count)]


def encode(module, chunk):
    """The trainer's layout: [first notes; partners]; `module` may be a wrapper holding the model as `.module`."""
    model = getattr(module, "module", module)
    return module(model.collate([a for a, _ in chunk] + [b for _, b in chunk]))


def build(variant, calibrate_on=None, **overrides):
    torch.manual_seed(0)
    model = NoteEncoder(NoteEncoderConfig.tiny(variant, **overrides), device="cpu")
    with torch.no_grad():  # non-zero LoRA B, so that the adapters' gradients depend on the whole forward
        for name, parameter in model.llm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    model.train()
    if model.needs_calibration:
        with torch.no_grad():  # as the trainer does: calibrate on a full batch before training
            encode(model, calibrate_on or pairs())
    return model


def grads(model, loss_module):
    found = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    if loss_module.temperature.grad is not None:
        found["temperature"] = loss_module.temperature.grad.clone()
    model.zero_grad(set_to_none=True)
    loss_module.zero_grad(set_to_none=True)
    return found


def plain_step(model, loss_module, batch, scale=1.0):
    output = encode(model, batch)
    losses = loss_module(output.embedding, output.visual_embedding)
    (losses["loss"] * scale).backward()
    return {key: value.detach() for key, value in losses.items()}, grads(model, loss_module)


def cached_step(model, loss_module, batch, chunk, **options):
    result = cached_contrastive_step(model, loss_module, batch, encode, chunk, **options)
    return result, grads(model, loss_module)


def mismatches(found, expected, rtol=1e-4):
    """Names whose gradient differs from the expected one by more than rtol of its norm (or of the whole
    gradient's, for those that are ~0 by symmetry)."""
    assert found.keys() == expected.keys()
    total = sum(g.norm() ** 2 for g in expected.values()).sqrt().item()
    return [name for name, g in expected.items()
            if (found[name] - g).norm().item() > rtol * max(g.norm().item(), 1e-3 * total)]


@pytest.mark.parametrize("variant", ["basic", "micl", "micl+late"])
@pytest.mark.parametrize("chunk", [2, 4])  # 6 pairs: chunks that divide the batch, and 4 + 2
def test_cached_step_equals_the_full_batch_step(variant, chunk):
    model, loss_module, batch = build(variant), ContrastiveLoss(), pairs()
    expected_losses, expected = plain_step(model, loss_module, batch)
    result, found = cached_step(model, loss_module, batch, chunk)
    assert result.losses.keys() == expected_losses.keys()
    for key, value in expected_losses.items():
        assert result.losses[key].item() == pytest.approx(value.item(), rel=1e-5), key
    assert "temperature" in expected and expected["temperature"].abs().item() > 0
    assert any("lora_A" in name for name in expected) and any(name.startswith("connector.") for name in expected)
    if variant == "micl+late":
        assert any(name.startswith("fusion.gate") for name in expected)
    assert mismatches(found, expected) == []
    assert result.recompute_error <= 1e-6  # pass (c) recomputed the embeddings of pass (a)
    if variant == "micl+late":
        output = encode(model, batch)
        assert result.gate == pytest.approx(output.gate.mean().item(), rel=1e-5)
    else:
        assert result.gate is None


def test_one_pair_chunks_a_chunk_larger_than_the_batch_and_a_loss_scale():
    model, loss_module, batch = build("micl"), ContrastiveLoss(), pairs(4)
    _, expected = plain_step(model, loss_module, batch, scale=3.0)
    for chunk in (1, 7):
        _, found = cached_step(model, loss_module, batch, chunk, loss_scale=3.0)
        assert mismatches(found, expected) == [], chunk


def test_micl_without_the_visual_loss_caches_only_the_note_side():
    model, loss_module, batch = build("micl"), ContrastiveLoss(visual_weight=0.0), pairs(4)
    _, expected = plain_step(model, loss_module, batch)
    result, found = cached_step(model, loss_module, batch, 3)
    assert "visual_loss" not in result.losses
    assert mismatches(found, expected) == []


def test_gradients_from_the_other_side_of_the_pair_fail_the_comparison(monkeypatch):
    """The equality above is sharp enough to see pass (c) back-propagate each note's partner's gradient."""
    model, loss_module, batch = build("micl+late"), ContrastiveLoss(), pairs()
    _, expected = plain_step(model, loss_module, batch)
    swapped = lambda start, stop, count: torch.cat([torch.arange(count + start, count + stop),
                                                    torch.arange(start, stop)])
    monkeypatch.setattr(grad_cache, "chunk_rows", swapped)
    _, found = cached_step(model, loss_module, batch, 2)
    assert len(mismatches(found, expected)) > len(expected) // 2


def with_dropout(model, p=0.3):
    """Dropout inside the model (the tiny model has none): on the head's input and the visual tokens."""
    drop = lambda module, args: (F.dropout(args[0], p, training=module.training),) + tuple(args[1:])
    model.head.register_forward_pre_hook(drop)
    model.connector.output.register_forward_pre_hook(drop)
    return model


def chunked_reference(model, loss_module, batch, chunk):
    """The same dropout masks as a cached step: chunks encoded in order from the same RNG state, with grad."""
    bounds = chunk_bounds(len(batch), chunk)
    outputs = [encode(model, batch[start:stop]) for start, stop in bounds]
    sizes = [stop - start for start, stop in bounds]
    join = lambda parts: torch.cat([p[:n] for p, n in zip(parts, sizes)] + [p[n:] for p, n in zip(parts, sizes)])
    losses = loss_module(join([o.embedding for o in outputs]), join([o.visual_embedding for o in outputs]))
    losses["loss"].backward()
    return grads(model, loss_module)


def test_dropout_draws_the_same_masks_in_both_passes(monkeypatch):
    model, loss_module, batch = with_dropout(build("micl+late")), ContrastiveLoss(), pairs()
    torch.manual_seed(1)
    expected = chunked_reference(model, loss_module, batch, 4)
    after_reference = torch.get_rng_state()
    torch.manual_seed(1)
    result, found = cached_step(model, loss_module, batch, 4)
    assert result.recompute_error <= 1e-6
    assert mismatches(found, expected) == []
    # The generator ends where one pass over the chunks leaves it: the next step's draws do not shift.
    assert torch.equal(torch.get_rng_state(), after_reference)
    # Without restoring the state, pass (c) draws new masks: the recomputed embeddings and the gradients differ.
    monkeypatch.setattr(grad_cache, "_set_rng_state", lambda state, device: None)
    torch.manual_seed(1)
    result, found = cached_step(model, loss_module, batch, 4)
    assert result.recompute_error > 1e-3
    assert mismatches(found, expected) != []


def test_pass_a_takes_the_training_path_under_a_bf16_backbone():
    """The no-grad forward folds LoRA into bf16 weights (another function than the training forward); pass
    (a) must reproduce pass (c) exactly all the same."""
    model = build("micl", backbone_dtype="bfloat16")
    batch = pairs(4)
    with torch.no_grad():
        inference = encode(model, batch).embedding
    training = encode(model, batch).embedding.detach()
    assert (inference - training).abs().max().item() > 1e-4  # the two paths do differ here
    result, _ = cached_step(model, ContrastiveLoss(), batch, 2)
    assert result.recompute_error <= 1e-6


class Wrapper(torch.nn.Module):
    """Stands for DDP: holds the model as `.module` and forwards to it."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_pass_a_bypasses_the_wrapper_and_only_the_last_chunk_syncs():
    model = build("basic")
    wrapper, calls, synced = Wrapper(model), [], []

    def forward(module, chunk):
        calls.append("wrapper" if module is wrapper else "model")
        return encode(module, chunk)

    @contextlib.contextmanager
    def no_sync():
        synced.append(len(calls))  # entered before the chunk's forward
        yield

    cached_contrastive_step(wrapper, ContrastiveLoss(), pairs(), forward, 4, no_sync=no_sync)
    assert calls == ["model", "model", "wrapper", "wrapper"]
    assert synced == [2]  # the first chunk of pass (c) accumulates without reducing; the last one reduces


def test_an_uncalibrated_model_is_refused_and_a_non_finite_loss_writes_no_gradient():
    torch.manual_seed(0)
    fresh = NoteEncoder(NoteEncoderConfig.tiny("micl+late"), device="cpu").train()
    with pytest.raises(ValueError, match="calibrat"):
        cached_contrastive_step(fresh, ContrastiveLoss(), pairs(2), encode, 1)
    assert fresh.needs_calibration  # not calibrated on a chunk either
    model, loss_module = build("basic"), ContrastiveLoss()
    loss_module.temperature.data.fill_(float("nan"))
    result = cached_contrastive_step(model, loss_module, pairs(2), encode, 1)
    assert not torch.isfinite(result.losses["loss"])
    assert grads(model, loss_module) == {}
    with pytest.raises(ValueError):
        cached_contrastive_step(model, ContrastiveLoss(), pairs(2), encode, 0)


def test_the_trainer_with_gradient_caching_trains_as_the_plain_step(tmp_path):
    """Through the trainer's own step: a run with --grad-cache-chunk follows the plain run's losses step for
    step (the cached step back-propagates, scales and steps like the plain one), for mICL + late fusion."""
    from core.runs import read_events
    from core.train.trainer import train
    from tests.unit.engine_fixtures import import_learnable

    root = tmp_path / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    common = dict(preset="tiny", test_fraction=0.3, steps=4, eval_every=0, checkpoint_every=10, batch_pairs=6,
                  seed=3)
    train(root, "toy", "micl+late", "plain", **common)
    train(root, "toy", "micl+late", "cached", grad_cache_chunk=4, **common)

    def losses(run):
        return [(row["loss"], row.get("visual_loss"), row.get("gate"))
                for row in read_events(root / "runs" / run) if "loss" in row and "step" in row]

    plain, cached = losses("plain"), losses("cached")
    assert len(plain) == len(cached) == 4
    for (loss_a, visual_a, gate_a), (loss_b, visual_b, gate_b) in zip(plain, cached):
        assert loss_b == pytest.approx(loss_a, abs=2e-3)
        assert visual_b == pytest.approx(visual_a, abs=2e-3)
        assert gate_b == pytest.approx(gate_a, abs=2e-3)
    assert plain[-1][0] != pytest.approx(plain[0][0], abs=1e-3)  # the runs learn: equal losses are not frozen ones
