"""The multimodal large representation model (MLRM) of NoteLLM-2: any causal LLM plus any frozen vision
tower, joined by a connector, read out at one token, fused late with the image, and projected to a small
L2-normalised vector.

Six variants come from two switches (docs/METHOD.md):

    image_mode  none | basic | micl        late_fusion  off | on
    text  basic  micl  late (= none+on)  basic+late  micl+late (= NoteLLM-2)

Under mICL one pass gives two states: n_v, just before the <IMG_EMB> slot (it has seen only the image part
of the prompt, by causality), and n_m, at the last token (it has seen everything). Both are trained; only
n_m's embedding is used for retrieval.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data.schema import Note
from core.errors import WorkbenchError
from core.models import fast_decoder, lora_train, provision
from core.models.compact import dequantize_state, quantize_state
from core.models.connector import MLPConnector, QFormer
from core.models.fusion import LateFusionGate
from core.models.llm import TINY_LLM, load_llm
from core.models.prompts import IMAGE_MODES, IMAGE_TOKEN, SLOT_TOKEN, PromptBuilder, PromptConfig
from core.models.vision import PREPROCESSING, VisionFeatures, load_vision_tower
from core.runtime import autocast, resolve_device, training_attention

VARIANTS: dict[str, tuple[str, bool]] = {
    "text": ("none", False),
    "basic": ("basic", False),
    "micl": ("micl", False),
    "late": ("none", True),
    "basic+late": ("basic", True),
    "micl+late": ("micl", True),
}
CHECKPOINT_FORMAT = "notellm2-workbench/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def variant_name(image_mode: str, late_fusion: bool) -> str:
    return next(name for name, switches in VARIANTS.items() if switches == (image_mode, late_fusion))


@dataclass
class NoteEncoderConfig:
    llm: str = provision.OFFLINE_LLM
    vision: str = provision.OFFLINE_VISION
    image_mode: str = "micl"
    late_fusion: bool = True
    embedding_dim: int = 64
    connector: str = "qformer"  # qformer | mlp
    num_query_tokens: int = 16
    qformer_width: int = 384
    qformer_layers: int = 2
    qformer_heads: int = 6
    cross_attention_every: int = 2
    llm_tuning: str = "lora"  # lora | full | frozen
    lora_rank: int = 16
    lora_alpha: int = 32
    backbone_dtype: str = "bfloat16"  # frozen backbone weights; trainable modules stay fp32
    image_preprocessing: str = "pad"  # pad | stretch (core/models/vision.py, square_on_white)
    # Subtract a learnable offset (started at the first batch's mean state) from n_m and n_v before fusion
    # and the head: a causal LLM's final states share a large common direction (cosine ~0.97 between notes
    # at the same position), which a head without bias has to unlearn before the embeddings can spread.
    center_states: bool = False
    prompt: PromptConfig = field(default_factory=PromptConfig)

    def __post_init__(self):
        if isinstance(self.prompt, dict):
            self.prompt = PromptConfig(**self.prompt)
        if self.image_mode not in IMAGE_MODES:
            raise WorkbenchError(f"image_mode must be one of {', '.join(IMAGE_MODES)}, not {self.image_mode!r}")
        if self.connector not in ("qformer", "mlp"):
            raise WorkbenchError(f"connector must be qformer or mlp, not {self.connector!r}")
        if self.llm_tuning not in ("lora", "full", "frozen"):
            raise WorkbenchError(f"llm_tuning must be lora, full or frozen, not {self.llm_tuning!r}")
        if self.backbone_dtype not in ("bfloat16", "float32"):
            raise WorkbenchError(f"backbone_dtype must be bfloat16 or float32, not {self.backbone_dtype!r}")
        if self.image_preprocessing not in PREPROCESSING:
            raise WorkbenchError(f"image_preprocessing must be one of {', '.join(PREPROCESSING)}, "
                                 f"not {self.image_preprocessing!r}")

    @property
    def variant(self) -> str:
        return variant_name(self.image_mode, self.late_fusion)

    @property
    def uses_image(self) -> bool:
        return self.image_mode != "none" or self.late_fusion

    @classmethod
    def for_variant(cls, variant: str, **overrides) -> "NoteEncoderConfig":
        if variant not in VARIANTS:
            raise WorkbenchError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        image_mode, late_fusion = VARIANTS[variant]
        return cls(image_mode=image_mode, late_fusion=late_fusion, **overrides)

    @classmethod
    def tiny(cls, variant: str = "micl+late", **overrides) -> "NoteEncoderConfig":
        """Random two-layer backbones built in code: seconds per run, for tests and checks."""
        settings = dict(llm=TINY_LLM, vision="tiny:clip", embedding_dim=16, num_query_tokens=4, qformer_width=32,
                        qformer_layers=2, qformer_heads=2, lora_rank=4, lora_alpha=8, backbone_dtype="float32")
        settings.update(overrides)
        return cls.for_variant(variant, **settings)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NoteEncoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WorkbenchError(f"checkpoint config has unknown fields {unknown}; it was written by another version")
        # Checkpoints written before the preprocessing was a setting were trained on stretched pictures.
        data = {"image_preprocessing": "stretch", **data}
        return cls(**data)


@dataclass
class NoteEncoderOutput:
    embedding: torch.Tensor  # (N, dim) L2-normalised; the retrieval vector (from n_m)
    note_state: torch.Tensor  # n_m, (N, llm width)
    visual_embedding: torch.Tensor | None = None  # from n_v under mICL
    visual_state: torch.Tensor | None = None  # n_v
    gate: torch.Tensor | None = None  # late-fusion z for n_m, (N, llm width), in (0, 1): share from the LLM
    visual_gate: torch.Tensor | None = None
    has_image: torch.Tensor | None = None  # (N,) bool: False where a zero image stood in


class NoteEncoder(nn.Module):
    def __init__(self, config: NoteEncoderConfig, device: str | torch.device | None = None):
        super().__init__()
        self.config = config
        self.variant = config.variant
        train_full = config.llm_tuning == "full"
        backbone_dtype = torch.float32 if train_full else getattr(torch, config.backbone_dtype)
        self.llm, self.tokenizer = load_llm(config.llm, dtype=backbone_dtype)
        self.llm.requires_grad_(train_full)
        llm_width = self.llm.config.hidden_size
        embeddings = self.llm.get_input_embeddings().weight.detach().float()
        embedding_rms = embeddings.pow(2).mean().sqrt().item()

        self.vision = None
        if config.uses_image:
            self.vision = load_vision_tower(config.vision).to(backbone_dtype)
            self.vision.requires_grad_(False)
            self.vision.preprocessing = config.image_preprocessing
        self.connector = None
        if config.image_mode != "none":
            if config.connector == "qformer":
                self.connector = QFormer(self.vision.width, llm_width, config.num_query_tokens, config.qformer_width,
                                         config.qformer_layers, config.qformer_heads, config.cross_attention_every,
                                         embedding_rms)
            else:
                rows, cols = self.vision.grid
                self.connector = MLPConnector(self.vision.width, llm_width, rows * cols, embedding_rms)
        # New special token (the mICL slot) starts at the mean input embedding, as in the reference.
        self.slot_embedding = nn.Parameter(embeddings.mean(0)) if config.image_mode == "micl" else None
        self.fusion = LateFusionGate(self.vision.width, llm_width) if config.late_fusion else None
        self.head = nn.Linear(llm_width, config.embedding_dim, bias=False)
        self.state_offset = None
        if config.center_states:
            self.state_offset = nn.Parameter(torch.zeros(2, llm_width))  # row 0: n_m, row 1: n_v
            self.register_buffer("state_offset_calibrated", torch.tensor(False))
        if config.llm_tuning == "lora":
            self._add_lora()
        num_visual = self.connector.num_tokens if self.connector is not None else 0
        self.prompts = PromptBuilder(self.tokenizer, config.prompt, config.image_mode, num_visual)
        self._feature_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Inference without gradients runs the LLM through core/models/fast_decoder.py (same function,
        # fewer passes); False forces the model's own forward, e.g. to compare the two.
        self.fast_inference = True
        self._fused_llm: fast_decoder.FusedWeights | None = None
        # Training forwards of a frozen-base LLM (LoRA, or frozen) run through core/models/lora_train.py (same
        # function, about half the step time on CPU); False forces peft + transformers, the reference.
        self.lean_training = True
        # Long encoding jobs may run the inference path through torch.compile (fast_decoder.compiled_forward);
        # off by default: compiling costs minutes, more than an interactive query gains.
        self.compile_inference = False
        self._lean_llm: lora_train.TrainWeights | None = None
        self.to(resolve_device(device) if not isinstance(device, torch.device) else device)

    def train(self, mode: bool = True) -> "NoteEncoder":
        """Frozen parts stay in eval mode while the rest trains: the vision tower always (see VisionTower),
        and the LLM when it is not tuned at all."""
        super().train(mode)
        if self.config.llm_tuning == "frozen":
            self.llm.eval()
        return self

    # ----------------------------------------------------------------------------------------- building
    def _add_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        targets = sorted({name.rsplit(".", 1)[-1] for name, module in self.llm.named_modules()
                          if isinstance(module, nn.Linear)})
        lora = LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_alpha, lora_dropout=0.0,
                          target_modules=targets)
        inject_adapter_in_model(lora, self.llm)
        for name, parameter in self.llm.named_parameters():
            if "lora_" in name:
                parameter.data = parameter.data.float()
                parameter.requires_grad_(True)

    def _use_fast_llm(self, llm_kwargs: dict) -> bool:
        if not self.fast_inference or llm_kwargs or torch.is_grad_enabled() or not fast_decoder.supports(self.llm):
            return False
        # Hooks (analysis, debugging) expect the model's own modules to run.
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.llm.modules())

    def _use_lean_training(self, llm_kwargs: dict, attention_mask: torch.Tensor | None) -> bool:
        return (self.lean_training and torch.is_grad_enabled() and not llm_kwargs and attention_mask is None
                and lora_train.supports(self.llm))

    def _lean_llm_weights(self, use_autocast: bool) -> lora_train.TrainWeights:
        dtype = torch.bfloat16 if use_autocast else None
        key = lora_train.TrainWeights.state_key(self.llm, dtype)
        if self._lean_llm is None or self._lean_llm.key != key:
            self._lean_llm = None
            self._lean_llm = lora_train.TrainWeights(self.llm, dtype)
        return self._lean_llm

    def _fused_llm_weights(self, dtype: torch.dtype | None) -> fast_decoder.FusedWeights:
        key = fast_decoder.FusedWeights.state_key(self.llm, dtype)
        if self._fused_llm is None or self._fused_llm.key != key:
            self._fused_llm = None
            self._fused_llm = fast_decoder.FusedWeights(self.llm, dtype)
        return self._fused_llm

    @property
    def needs_calibration(self) -> bool:
        """True until a first batch has fixed the data-dependent starting values (late fusion's image scale,
        the state offset); the trainer runs that batch before any process diverges."""
        fusion = self.fusion is not None and not bool(self.fusion.calibrated)
        offset = self.state_offset is not None and not bool(self.state_offset_calibrated)
        return fusion or offset

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, so the trainer can give new modules and the LLM their own learning rates."""
        llm = [p for p in self.llm.parameters() if p.requires_grad]
        new = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("llm.")]
        return {"new_modules": new, "llm": llm}

    # ------------------------------------------------------------------------------------------ inputs
    def collate(self, notes: Sequence[Note], modality: str = "both") -> dict:
        """Token ids, masks and read-out positions for a batch of notes, plus their images.

        modality: "both"; "image" empties the text; "text" replaces every image with a zero image."""
        prompts = [self.prompts.build(note, modality) for note in notes]
        batch = self.prompts.collate(prompts)
        batch["images"] = [None if modality == "text" else note.image for note in notes]
        return batch

    def image_features(self, images: Sequence) -> tuple[VisionFeatures, torch.Tensor]:
        """Frozen vision features, cached per image path (store images are content-addressed, so a path
        names its pixels)."""
        keys = [image if isinstance(image, str) and image else None for image in images]
        missing = [i for i, key in enumerate(keys) if key is None or key not in self._feature_cache]
        computed, computed_mask = None, None
        if missing:
            computed, computed_mask = self.vision([images[i] for i in missing])
            for row, i in enumerate(missing):
                if keys[i] is not None and computed_mask[row] and len(self._feature_cache) < 8192:
                    self._feature_cache[keys[i]] = (computed.pooled[row].cpu(), computed.patches[row].cpu())
        pooled, patches, has_image = [], [], []
        by_row = {i: row for row, i in enumerate(missing)}
        for i, key in enumerate(keys):
            if i in by_row:
                row = by_row[i]
                pooled.append(computed.pooled[row].cpu()); patches.append(computed.patches[row].cpu())
                has_image.append(bool(computed_mask[row]))
            else:
                cached_pooled, cached_patches = self._feature_cache[key]
                pooled.append(cached_pooled); patches.append(cached_patches); has_image.append(True)
        features = VisionFeatures(torch.stack(pooled), torch.stack(patches), self.vision.grid)
        return features.to(self.device), torch.tensor(has_image)

    # ----------------------------------------------------------------------------------------- forward
    def input_embeddings(self, input_ids: torch.Tensor, visual_tokens: torch.Tensor | None) -> torch.Tensor:
        table = self.llm.get_input_embeddings()
        embeds = table(input_ids.clamp(min=0))
        image_positions = input_ids == IMAGE_TOKEN
        if visual_tokens is not None and image_positions.any():
            embeds = embeds.masked_scatter(image_positions.unsqueeze(-1), visual_tokens.to(embeds.dtype))
        slot_positions = input_ids == SLOT_TOKEN
        if self.slot_embedding is not None and slot_positions.any():
            slot = self.slot_embedding.to(embeds.dtype).expand_as(embeds)
            embeds = torch.where(slot_positions.unsqueeze(-1), slot, embeds)
        return embeds

    def forward(self, batch: dict, vision: VisionFeatures | None = None, has_image: torch.Tensor | None = None,
                **llm_kwargs) -> NoteEncoderOutput:
        device = self.device
        input_ids = batch["input_ids"].to(device)
        attention_mask = batch["attention_mask"].to(device)
        if self.vision is not None and vision is None:
            vision, has_image = self.image_features(batch["images"])
        rows = torch.arange(input_ids.shape[0], device=device)
        use_autocast = self.config.backbone_dtype == "bfloat16"
        fast = self._use_fast_llm(llm_kwargs)
        if torch.is_grad_enabled():
            self._fused_llm = None  # a training step is about to change the weights: free the inference copy
        if not llm_kwargs and bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
            # Right padding under causal attention: no real token ever attends to a pad, and only real
            # tokens are read out, so the mask changes nothing we use; without it SDPA runs its causal kernel.
            attention_mask = None
        with autocast(device, enabled=use_autocast):
            visual_tokens = None
            if self.connector is not None:
                visual_tokens = self.connector(vision.pooled.float(), vision.patches.float())
            embeds = self.input_embeddings(input_ids, visual_tokens)
            if self._use_lean_training(llm_kwargs, attention_mask):
                hidden = lora_train.forward(self.llm, self._lean_llm_weights(use_autocast), embeds)
            elif not fast:
                with training_attention(device) if not llm_kwargs else contextlib.nullcontext():
                    hidden = self.llm(inputs_embeds=embeds, attention_mask=attention_mask,
                                      **llm_kwargs).last_hidden_state
        if fast:
            weights = self._fused_llm_weights(torch.bfloat16 if use_autocast else None)
            decoder_forward = fast_decoder.compiled_forward if self.compile_inference else fast_decoder.forward
            hidden = decoder_forward(self.llm, weights, embeds)
        note_state = hidden[rows, batch["last_index"].to(device)].float()
        visual_state = None
        if self.config.image_mode == "micl":
            visual_state = hidden[rows, batch["visual_index"].to(device)].float()
        if self.state_offset is not None:
            if not bool(self.state_offset_calibrated):
                with torch.no_grad():
                    self.state_offset[0].copy_(note_state.detach().mean(0))
                    if visual_state is not None:
                        self.state_offset[1].copy_(visual_state.detach().mean(0))
                    self.state_offset_calibrated.fill_(True)
            note_state = note_state - self.state_offset[0]
            if visual_state is not None:
                visual_state = visual_state - self.state_offset[1]
        output = NoteEncoderOutput(embedding=None, note_state=note_state, visual_state=visual_state,
                                   has_image=has_image)
        fused_note, fused_visual = note_state, visual_state
        if self.fusion is not None:
            image_feature = vision.pooled.float()
            real = (has_image.to(device) if has_image is not None
                    else torch.ones(len(note_state), dtype=torch.bool, device=device))
            if not bool(self.fusion.calibrated) and bool(real.any()):
                # Only real pictures calibrate W_p: a zero image's feature has another scale altogether.
                self.fusion.calibrate(note_state.detach()[real], image_feature[real])
            projected = self.fusion.project_image(image_feature)
            # A note without a picture keeps its LLM state (gate 1): mixing in the zero image's feature
            # would pull every image-less note towards one shared point.
            fused_note, output.gate = self.fusion(note_state, projected, real)
            if visual_state is not None:
                fused_visual, output.visual_gate = self.fusion(visual_state, projected, real)
        output.embedding = F.normalize(self.head(fused_note), dim=-1)
        if fused_visual is not None:
            output.visual_embedding = F.normalize(self.head(fused_visual), dim=-1)
        return output

    # ------------------------------------------------------------------------------------------ encode
    @torch.inference_mode()
    def encode(self, notes: Sequence[Note | dict], batch_size: int = 32, modality: str = "both",
               progress: Callable[[int, int], None] | None = None,
               image_features: Callable[[list], tuple[VisionFeatures, torch.Tensor]] | None = None) -> np.ndarray:
        """(N, embedding_dim) float32, L2-normalised, in the order of `notes`.

        Notes are sorted by prompt length so each batch pads little; the order is restored at the end.
        `image_features(images) -> (VisionFeatures, has_image)` replaces the in-memory feature cache (the
        engine passes its on-disk cache)."""
        notes = [note if isinstance(note, Note) else Note.from_dict(note) for note in notes]
        was_training = self.training
        self.eval()
        lengths = [len(self.prompts.build(note, modality).ids) for note in notes]
        order = np.argsort(lengths, kind="stable")
        result = np.zeros((len(notes), self.config.embedding_dim), dtype=np.float32)
        for start in range(0, len(notes), batch_size):
            index = order[start:start + batch_size]
            batch = self.collate([notes[i] for i in index], modality)
            vision, has_image = image_features(batch["images"]) if image_features and self.vision else (None, None)
            output = self(batch, vision=vision, has_image=has_image)
            result[index] = output.embedding.float().cpu().numpy()
            if progress is not None:
                progress(min(start + batch_size, len(notes)), len(notes))
        self.train(was_training)
        return result

    # ------------------------------------------------------------------------------------- persistence
    def _persisted_keys(self) -> list[str]:
        """What a checkpoint holds: every new module, LoRA weights, and backbone weights only when they
        cannot be rebuilt from their name (fully fine-tuned LLM, random tiny backbones)."""
        keep_llm = self.config.llm_tuning == "full" or self.config.llm.startswith("tiny:")
        keep_vision = self.config.vision.startswith("tiny:")
        keys = []
        for key in self.state_dict():
            if key.startswith("llm."):
                if keep_llm or "lora_" in key:
                    keys.append(key)
            elif key.startswith("vision."):
                if keep_vision:
                    keys.append(key)
            else:
                keys.append(key)
        return keys

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None, int8: bool = False) -> Path:
        """config.json + model.safetensors. `dtype=torch.bfloat16` halves a checkpoint; `int8=True` stores large
        matrices as int8 rows with per-row scales (core/models/compact.py), for shipped demo checkpoints.
        Loading casts back to each parameter's own dtype."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        tensors = {key: state[key].detach().contiguous().cpu() for key in self._persisted_keys()}
        if dtype is not None:
            tensors = {key: value.to(dtype) if value.is_floating_point() else value for key, value in tensors.items()}
        if int8:
            tensors = quantize_state(tensors)
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
        meta = {"format": CHECKPOINT_FORMAT, "variant": self.variant, "config": self.config.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
        return directory

    @classmethod
    def read_config(cls, directory: str | Path) -> NoteEncoderConfig:
        path = Path(directory) / CONFIG_FILE
        if not path.exists():
            raise WorkbenchError(f"{directory} is not a NoteEncoder checkpoint (no {CONFIG_FILE})")
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise WorkbenchError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise WorkbenchError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
        return NoteEncoderConfig.from_dict(meta["config"])

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None,
                        **config_overrides) -> "NoteEncoder":
        config = cls.read_config(directory)
        if config_overrides:
            config = replace(config, **config_overrides)
        model = cls(config, device=device)
        model.load_weights(Path(directory) / WEIGHTS_FILE)
        return model

    def load_weights(self, path: str | Path) -> None:
        """Load a checkpoint's tensors; a checkpoint of another architecture is a clear error."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.exists():
            raise WorkbenchError(f"{path} is missing")
        tensors = dequantize_state(load_file(str(path)))
        own = self.state_dict()
        expected = set(self._persisted_keys())
        unexpected = sorted(set(tensors) - set(own))
        missing = sorted(expected - set(tensors))
        mismatched = sorted(k for k in set(tensors) & set(own) if tensors[k].shape != own[k].shape)
        if unexpected or missing or mismatched:
            detail = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                               for label, keys in (("unexpected", unexpected), ("missing", missing),
                                                   ("wrong shape", mismatched)) if keys)
            raise WorkbenchError(f"{path} does not match a {self.variant} model with these backbones ({detail})")
        self.load_state_dict(tensors, strict=False)
