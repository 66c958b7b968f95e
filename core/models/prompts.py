"""Prompts that make a causal LLM compress a note into the state of one token.

Every prompt ends with the instruction "compress this note into one word:" and an opening quote, so the
last token's state stands for the note. Three shapes:

    text   Note: {title, topics, content} + instruction
    basic  Note: {image: <IMG>, title, topics, content} + instruction
    micl   Note: {image: <IMG>} + instruction + "<IMG_EMB>". Note: {title, topics, content} + instruction

Token sequences use two negative sentinel ids that are never looked up in the LLM's vocabulary: IMAGE_TOKEN
(repeated once per visual token, so the connector's outputs replace the placeholder in place) and SLOT_TOKEN
(the mICL <IMG_EMB> slot, whose embedding is a trainable vector of the model). Keeping them out of the
vocabulary means no embedding matrix is resized, so a LoRA checkpoint stays a few MB and any LLM works as is.

Truncation follows the reference: title, content and topics are cut by characters, the note body by tokens,
and the instruction suffix is tokenised separately and appended afterwards, so it is never cut. The
reference's limits (20/80 characters, 140 tokens) were set for short Chinese notes; English defaults are
longer, and `PromptConfig.reference()` restores the reference exactly.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import torch

from core.data.schema import extract_topics

IMAGE_TOKEN = -1
SLOT_TOKEN = -2
IMAGE_MODES = ("none", "basic", "micl")
MODALITIES = ("both", "image", "text")

TEMPLATES = {
    "en": {
        "open": "Note: {",
        "image": '"image": ',
        "fields": ('"title": ', '"topics": ', '"content": '),
        "separator": ", ",
        "close": "}",
        "instruction": ', compress this note into one word: "',
        "slot_close": '".\n',
    },
    "zh": {
        "open": "笔记：{",
        "image": "'图片'：",
        "fields": ("'标题'：", "'话题'：", "'内容'："),
        "separator": "，",
        "close": "}",
        "instruction": "，压缩这篇笔记为一个词：“",
        "slot_close": "”。\n",
    },
}


@dataclass
class PromptConfig:
    language: str = "en"
    max_title_chars: int = 64
    max_content_chars: int = 240
    max_topics: int = 10
    max_topic_chars: int = 16
    max_prompt_tokens: int = 128

    @classmethod
    def reference(cls, language: str = "zh") -> "PromptConfig":
        return cls(language=language, max_title_chars=20, max_content_chars=80, max_prompt_tokens=140)

    def to_dict(self) -> dict:
        return asdict(self)


_WHITESPACE = re.compile(r"\s+")


def clean_text(text: str, limit: int) -> str:
    return _WHITESPACE.sub(" ", str(text or "")).strip()[:limit]


@dataclass
class PromptTokens:
    ids: list[int]  # text token ids plus IMAGE_TOKEN / SLOT_TOKEN sentinels
    last_index: int  # position of the last token: n_m is read here
    visual_index: int  # position just before the slot: n_v is read here (-1 when there is no slot)


class PromptBuilder:
    """Turns notes into token id sequences for one image mode; pads batches on the right."""

    def __init__(self, tokenizer, config: PromptConfig, image_mode: str, num_visual_tokens: int):
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {IMAGE_MODES}, not {image_mode!r}")
        if config.language not in TEMPLATES:
            raise ValueError(f"prompt language must be one of {tuple(TEMPLATES)}, not {config.language!r}")
        self.tokenizer = tokenizer
        self.config = config
        self.image_mode = image_mode
        self.num_visual_tokens = num_visual_tokens
        self.template = TEMPLATES[config.language]
        self.pad_id = tokenizer.pad_token_id
        with_special = tokenizer("x")["input_ids"]
        plain = tokenizer("x", add_special_tokens=False)["input_ids"]
        # BOS-style prefix the tokenizer would add on its own (empty for SmolLM2, <s> for Llama-2).
        self.prefix = with_special[: len(with_special) - len(plain)] if with_special[-len(plain):] == plain else []
        self._cache: dict[str, list[int]] = {}

    def _encode(self, text: str) -> list[int]:
        cached = self._cache.get(text)
        if cached is None:
            cached = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self._cache) < 4096:  # fixed template pieces repeat on every note
                self._cache[text] = cached
        return cached

    def note_fields(self, note) -> str:
        """The text fields of a note as the body of the prompt, cut to the configured character limits."""
        config, template = self.config, self.template
        # The importer's own hashtag rule, so a note composed in the UI reads like a stored one.
        content, topics = extract_topics(note.content or "", note.topics)
        topics = [clean_text(t, config.max_topic_chars) for t in topics][: config.max_topics]
        values = (clean_text(note.title, config.max_title_chars), ", ".join(t for t in topics if t),
                  clean_text(content, config.max_content_chars))
        return template["separator"].join(label + json.dumps(value, ensure_ascii=False)
                                          for label, value in zip(template["fields"], values))

    def build(self, note, modality: str = "both") -> PromptTokens:
        """Token ids for one note. modality "image" empties the text fields; "text" is handled by the caller
        (it feeds a zero image), so the prompt shape, and with it the variant, never changes."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")
        template = self.template
        if modality == "image":
            note = type(note)(note_id=note.note_id, image=note.image)
        visual = [IMAGE_TOKEN] * self.num_visual_tokens
        instruction = self._encode(template["instruction"])
        body = self._encode(self.note_fields(note))
        if self.image_mode == "micl":
            head = (self.prefix + self._encode(template["open"] + template["image"]) + visual
                    + self._encode(template["close"]) + instruction)
            visual_index = len(head) - 1
            head = head + [SLOT_TOKEN] + self._encode(template["slot_close"] + template["open"])
        elif self.image_mode == "basic":
            head = self.prefix + self._encode(template["open"] + template["image"]) + visual + self._encode(
                template["separator"])
            visual_index = -1
        else:
            head = self.prefix + self._encode(template["open"])
            visual_index = -1
        tail = self._encode(template["close"]) + instruction
        # Visual tokens count once (as the single placeholder the reference truncates with).
        fixed = len(head) - (self.num_visual_tokens - 1 if self.image_mode != "none" else 0) + len(tail)
        budget = max(self.config.max_prompt_tokens - fixed, 0)
        ids = head + body[:budget] + tail
        return PromptTokens(ids=ids, last_index=len(ids) - 1, visual_index=visual_index)

    def collate(self, prompts: list[PromptTokens]) -> dict[str, torch.Tensor]:
        """Right-padded batch: ids (sentinels kept), attention mask, and the two read-out positions."""
        width = max(len(p.ids) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt.ids)] = torch.tensor(prompt.ids)
            mask[row, : len(prompt.ids)] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "last_index": torch.tensor([p.last_index for p in prompts]),
            "visual_index": torch.tensor([p.visual_index for p in prompts]),
        }

    def render(self, prompt: PromptTokens) -> str:
        """Readable text of a prompt, with <IMG> and <IMG_EMB> where the sentinels are (for the UI and docs)."""
        pieces, run = [], []
        for token in prompt.ids + [None]:
            if token is not None and token >= 0:
                run.append(token)
                continue
            if run:
                pieces.append(self.tokenizer.decode(run))
                run = []
            if token == IMAGE_TOKEN and not pieces[-1:] == ["<IMG>"]:
                pieces.append("<IMG>")
            elif token == SLOT_TOKEN:
                pieces.append("<IMG_EMB>")
        return "".join(pieces)
