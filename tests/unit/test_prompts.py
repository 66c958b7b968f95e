"""Prompt shapes, truncation rules, and the never-cut instruction."""
import pytest

from core.data.schema import Note
from core.models.llm import tiny_tokenizer
from core.data.readers import extract_topics as split_topics
from core.models.prompts import IMAGE_TOKEN, SLOT_TOKEN, PromptBuilder, PromptConfig


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


NOTE = Note("n", "A red bird on a branch", "sits on a tree #nature# #birds#", ["animals"])


def test_three_prompt_shapes_in_english(tokenizer):
    text = PromptBuilder(tokenizer, PromptConfig(), "none", 4)
    basic = PromptBuilder(tokenizer, PromptConfig(), "basic", 4)
    micl = PromptBuilder(tokenizer, PromptConfig(), "micl", 4)
    assert text.render(text.build(NOTE)) == (
        'Note: {"title": "A red bird on a branch", "topics": "animals, nature, birds", '
        '"content": "sits on a tree"}, compress this note into one word: "')
    assert basic.render(basic.build(NOTE)).startswith('Note: {"image": <IMG>, "title": ')
    rendered = micl.render(micl.build(NOTE))
    assert rendered.startswith('Note: {"image": <IMG>}, compress this note into one word: "<IMG_EMB>".\nNote: {"title"')
    assert rendered.endswith('compress this note into one word: "')


def test_micl_reads_n_v_just_before_the_slot_and_n_m_at_the_end(tokenizer):
    builder = PromptBuilder(tokenizer, PromptConfig(), "micl", 4)
    prompt = builder.build(NOTE)
    assert prompt.ids[prompt.visual_index + 1] == SLOT_TOKEN
    assert prompt.ids.count(IMAGE_TOKEN) == 4 and prompt.ids.count(SLOT_TOKEN) == 1
    assert max(i for i, t in enumerate(prompt.ids) if t == IMAGE_TOKEN) < prompt.visual_index
    assert prompt.last_index == len(prompt.ids) - 1


def test_chinese_template(tokenizer):
    builder = PromptBuilder(tokenizer, PromptConfig(language="zh"), "micl", 2)
    rendered = builder.render(builder.build(Note("n", "红色的鸟", "在树上")))
    assert rendered.startswith("笔记：{'图片'：<IMG>}，压缩这篇笔记为一个词：“<IMG_EMB>”")
    assert rendered.endswith("压缩这篇笔记为一个词：“")


def test_instruction_survives_any_truncation(tokenizer):
    config = PromptConfig(max_title_chars=1000, max_content_chars=100000, max_prompt_tokens=60)
    builder = PromptBuilder(tokenizer, config, "basic", 4)
    instruction = tokenizer(', compress this note into one word: "', add_special_tokens=False)["input_ids"]
    prompt = builder.build(Note("n", "title " * 200, "content " * 2000))
    assert prompt.ids[-len(instruction):] == instruction
    assert len(prompt.ids) - 3 <= 60  # visual tokens count as one placeholder


def test_reference_character_limits(tokenizer):
    config = PromptConfig.reference(language="en")
    assert (config.max_title_chars, config.max_content_chars, config.max_prompt_tokens) == (20, 80, 140)
    builder = PromptBuilder(tokenizer, config, "none", 0)
    fields = builder.note_fields(Note("n", "t" * 50, "c\n" * 100, ["x" * 30] * 15))
    assert '"' + "t" * 20 + '"' in fields
    assert "t" * 21 not in fields
    assert fields.count("x" * 16) == 10 and "x" * 17 not in fields


def test_topics_are_pulled_out_of_content():
    content, topics = split_topics("Great view #travel# of the sea #sea view#")
    assert topics == ["travel", "sea view"]
    assert "#" not in content


def test_collate_pads_on_the_right(tokenizer):
    builder = PromptBuilder(tokenizer, PromptConfig(), "basic", 4)
    short, long = builder.build(Note("s", "a")), builder.build(Note("l", "a much longer title " * 5))
    batch = builder.collate([short, long])
    mask = batch["attention_mask"]
    assert mask[0, : len(short.ids)].all() and not mask[0, len(short.ids):].any()
    assert batch["last_index"].tolist() == [len(short.ids) - 1, len(long.ids) - 1]
