"""Training presets as data: one table that the trainer, the CLI's --preset choices and the app's preset list
all read.

A preset is a starting point, not a cage: it sets some TrainConfig fields (the rest keep TrainConfig's
defaults) and some NoteEncoderConfig fields on top of the variant's defaults; a run's own overrides win over
both (core.train.trainer.preset_configs). Why a value is what it is stays written beside it.

This module imports no model code at load time, so the CLI can list the choices cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from core.errors import WorkbenchError

if TYPE_CHECKING:
    from core.models.note_encoder import NoteEncoderConfig


@dataclass(frozen=True)
class Preset:
    name: str
    description: str  # one line, shown wherever a preset is chosen
    train: Mapping[str, Any]  # TrainConfig fields this preset sets
    model: Mapping[str, Any]  # NoteEncoderConfig fields on top of the variant's defaults
    tiny_backbones: bool = False  # random tiny backbones built in code (NoteEncoderConfig.tiny), not named ones

    def __post_init__(self):
        # Read-only: a caller that edits what it got back must not change the preset for everyone after it.
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))
        object.__setattr__(self, "model", MappingProxyType(dict(self.model)))

    def model_config(self, variant: str, **overrides) -> "NoteEncoderConfig":
        """The model config of `variant` under this preset; `overrides` (NoteEncoderConfig fields) win."""
        from core.models.note_encoder import NoteEncoderConfig

        settings = {**self.model, **overrides}
        if self.tiny_backbones:
            return NoteEncoderConfig.tiny(variant, **settings)
        return NoteEncoderConfig.for_variant(variant, **settings)

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "train": dict(self.train),
                "model": dict(self.model), "tiny_backbones": self.tiny_backbones}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preset":
        return cls(name=data["name"], description=data["description"], train=data.get("train") or {},
                   model=data.get("model") or {}, tiny_backbones=bool(data.get("tiny_backbones", False)))


# The CPU pilot's recipe: offline SmolLM2-135M + EfficientNet-Lite0, bf16 frozen weights.
CPU_TRAIN: Mapping[str, Any] = dict(
    batch_pairs=16,
    # New modules at 1e-4, not the pilot's 1e-3: at 1e-3 Adam's first steps collapse the fresh connector (the
    # spread of n_v across pictures fell from 0.15 to 0.02 in one step and the image-side loss sat at chance);
    # at 1e-4 the connector keeps the picture (docs/METHOD.md, "What was measured").
    lr_new=1e-4,
    lr_llm=2e-4,  # LoRA adapters
    checkpoint_every=25,
    eval_every=50,
)
# 2-layer Q-Former of width 384, 16 queries, LoRA r=16 on every projection.
CPU_MODEL: Mapping[str, Any] = dict(llm_tuning="lora", lora_rank=16, qformer_layers=2, qformer_width=384,
                                    qformer_heads=6, num_query_tokens=16)

PRESET_TABLE: tuple[Preset, ...] = (
    Preset(
        name="tiny",
        description="tiny random backbones built in code: seconds per run, for checks (results are meaningless)",
        train=dict(batch_pairs=8, lr_new=2e-3, lr_llm=2e-3, checkpoint_every=10, eval_every=0, device="cpu"),
        model={},
        tiny_backbones=True,
    ),
    Preset(
        name="cpu",
        description="offline SmolLM2-135M + EfficientNet-Lite0, LoRA on the LLM: about 5 s per step on 2 CPU cores",
        train=CPU_TRAIN,
        model=CPU_MODEL,
    ),
    Preset(
        name="cpu-wide",
        description="the cpu preset with 64 pairs per step (126 in-batch negatives per note) by gradient "
                    "caching in chunks of 16: a 16-pair step's memory, about 5x its time",
        # The reference trains with 254 negatives per note; the cpu preset sees 30. Gradient caching
        # (core/train/grad_cache.py) widens the batch without widening the activation memory, at about 4/3
        # of the plain path's time per pair (`make bench`: grad_cache_cost_per_pair). Same recipe otherwise.
        train={**CPU_TRAIN, "batch_pairs": 64, "grad_cache_chunk": 16},
        model=CPU_MODEL,
    ),
    Preset(
        name="reference",
        description="the paper's recipe (full fine-tuning, lr 3e-6, bf16): for GPUs and large data",
        # The reference recipe: full fine-tuning, lr 3e-6 for everything, wd 0.001, 10% warm-up, 16 pairs per
        # device. Meant for GPUs (bf16 autocast, fp32 master weights).
        train=dict(batch_pairs=16, lr_new=3e-6, lr_llm=3e-6, weight_decay=0.001, warmup_ratio=0.1,
                   checkpoint_every=500, eval_every=500),
        # A 6-layer Q-Former of width 768, as in the reference.
        model=dict(llm_tuning="full", qformer_layers=6, qformer_width=768, qformer_heads=12, num_query_tokens=16),
    ),
)

PRESETS: tuple[str, ...] = tuple(preset.name for preset in PRESET_TABLE)
DEFAULT_PRESET = "cpu"


def get_preset(name: str) -> Preset:
    for preset in PRESET_TABLE:
        if preset.name == name:
            return preset
    raise WorkbenchError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def preset_descriptions() -> dict[str, str]:
    """name -> one-line description, in the table's order: what a preset picker shows."""
    return {preset.name: preset.description for preset in PRESET_TABLE}
