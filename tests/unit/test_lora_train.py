"""The lean LoRA training path (core/models/lora_train.py) computes the peft + transformers function: the
same loss and the same gradients for every trainable parameter."""
import pytest
import torch

from core.models import lora_train
from core.models.note_encoder import NoteEncoder, NoteEncoderConfig
from core.train.loss import ContrastiveLoss
from tests.unit.model_fixtures import sample_notes


def _model(variant="micl+late", **overrides):
    torch.manual_seed(0)
    model = NoteEncoder(NoteEncoderConfig.tiny(variant, **overrides))
    with torch.no_grad():  # non-zero LoRA B, so that the adapters' products matter in the forward
        for name, parameter in model.llm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return model.train()


def _loss_and_grads(model, batch, lean: bool):
    model.lean_training = lean
    model.zero_grad(set_to_none=True)
    output = model(batch)
    loss = ContrastiveLoss(3.0, True, 9.0, 1.0)(output.embedding, output.visual_embedding)["loss"]
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_function(model, batch, rtol=1e-4):
    before = model._lean_llm
    reference_loss, reference = _loss_and_grads(model, batch, lean=False)
    assert model._lean_llm is before  # the reference path neither builds nor drops the lean weights
    loss, grads = _loss_and_grads(model, batch, lean=True)
    assert model._lean_llm is not None, "the lean path did not run"
    assert loss == pytest.approx(reference_loss, rel=rtol)
    assert grads.keys() == reference.keys()
    if model.config.llm_tuning == "lora":
        assert any("lora_A" in name for name in grads) and any("lora_B" in name for name in grads)
    else:
        assert any(name.startswith("connector.") for name in grads)  # through the frozen LLM to the image
    total = sum(g.norm() ** 2 for g in reference.values()).sqrt()
    for name, expected in reference.items():
        # Relative to the parameter's own gradient, or to the whole gradient for those that are ~0 by symmetry
        # (an attention key bias does not change a softmax).
        scale = max(expected.norm().item(), 1e-3 * total.item())
        assert (grads[name] - expected).norm().item() <= rtol * scale, name


@pytest.mark.parametrize("variant", ["micl+late", "text", "basic"])
def test_lean_training_path_matches_peft_loss_and_gradients(variant):
    model = _model(variant)
    assert lora_train.supports(model.llm)
    assert_same_function(model, model.collate(sample_notes()))


def test_lean_path_with_attention_biases_and_a_frozen_llm():
    model = _model("micl")
    for layer in model.llm.layers:  # Qwen2-style q/k/v biases (frozen)
        for name in ("q_proj", "k_proj", "v_proj"):
            base = getattr(layer.self_attn, name).base_layer
            base.bias = torch.nn.Parameter(torch.randn(base.out_features) * 0.1, requires_grad=False)
    assert_same_function(model, model.collate(sample_notes()))
    frozen = _model("micl", llm_tuning="frozen")
    assert lora_train.supports(frozen.llm)
    assert_same_function(frozen, frozen.collate(sample_notes()))


def test_unsupported_decoders_use_the_reference_path():
    full = _model("text", llm_tuning="full")
    assert not lora_train.supports(full.llm)  # trainable base weights need weight gradients
    full(full.collate(sample_notes()[:2])).embedding.sum().backward()
    assert full._lean_llm is None
    model = _model("text")
    handle = model.llm.layers[0].register_forward_hook(lambda *args: None)
    assert not lora_train.supports(model.llm)
    handle.remove()
    assert lora_train.supports(model.llm)


def test_lean_path_follows_optimizer_steps_and_keeps_checkpoint_keys(tmp_path):
    model = _model("micl+late")
    batch = model.collate(sample_notes())
    keys = set(model.state_dict())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss, _ = _loss_and_grads(model, batch, lean=True)
        optimizer.step()
    cached = model._lean_llm
    assert_same_function(model, batch)  # the adapters are read live: the updated LoRA weights are used
    assert model._lean_llm is cached  # frozen weights were not rebuilt
    assert set(model.state_dict()) == keys
    model.save_pretrained(tmp_path)
    loaded = NoteEncoder.from_pretrained(tmp_path)
    lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in lora.items())
