"""Causal LLM backbones: the offline SmolLM2-135M, any AutoModelForCausalLM by hub name or path, and a tiny
random Llama for tests. Only the decoder stack is kept: the note state is its final, normed hidden state, so
the LM head (often the largest matrix of a small model) is never run."""
from __future__ import annotations

import torch
from torch import nn

from core.errors import WorkbenchError
from core.models import provision

TINY_LLM = "tiny:llama"

_TINY_CORPUS = [
    'Note: {"image": , "title": "", "topics": "", "content": ""}, compress this note into one word: "',
    '笔记：{"图片": , "标题": "", "话题": "", "内容": ""}，压缩这篇笔记为一个词："',
    "the a an of to in and is for on with as by at from this that red blue green bird cat dog tree house car",
    "star flower music food sport map people animal icon sign arrow heart sun moon water fire cloud",
]


def tiny_tokenizer():
    """A small byte-level BPE tokenizer trained in code on a fixed corpus (deterministic, no files)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_TINY_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_llm(vocab_size: int, seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    # Its own seed on a forked generator: the tiny backbone stands for fixed pretrained weights, and the
    # global generator (seeded by the trainer) must still decide the new modules built after it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def load_llm(name: str, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """(decoder, tokenizer) for an offline name, `tiny:llama`, a hub name or a local folder."""
    if name == TINY_LLM:
        tokenizer = tiny_tokenizer()
        causal = tiny_llm(len(tokenizer))
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        source = str(provision.smollm2_folder()) if name == provision.OFFLINE_LLM else name
        try:
            config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise WorkbenchError(f"cannot load LLM {name!r}: not a local model folder, and the hub is unreachable "
                                 f"or has no such model ({type(error).__name__})") from None
        try:
            causal = AutoModelForCausalLM.from_pretrained(source, dtype=dtype,
                                                          attn_implementation=attn_implementation or "sdpa")
        except ValueError:
            raise WorkbenchError(f"unsupported LLM architecture {config.model_type!r} for {name!r}: "
                                 f"it is not a causal (decoder-only) language model") from None
        tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # right padding is masked out, so any id serves
    decoder = causal.get_decoder()
    decoder.to(dtype)
    return decoder, tokenizer
