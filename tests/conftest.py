"""Shared fixtures: a tiny random Llama with a character tokenizer, and isolated caches."""
from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def char_tokenizer():
    """A character-level fast tokenizer (no downloads) that adds no special tokens itself."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=104, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    model.config.use_cache = False
    return model


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes statistics into its own cache; the data folder is the shared one."""
    monkeypatch.setenv("METRIC_SEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    if SHARED_DATA.is_dir():
        monkeypatch.setenv("METRIC_SEARCH_DATA", str(SHARED_DATA))


@pytest.fixture
def tiny_model():
    return tiny_llama()


@pytest.fixture
def tokenizer():
    return char_tokenizer()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A saved tiny model + tokenizer directory, loadable by ``load_model``."""
    path = tmp_path / "tiny"
    tiny_llama().save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def text_dir(tmp_path):
    """A small corpus folder with valid.txt and test.txt (for ``text:PATH``)."""
    rng = torch.Generator().manual_seed(0)
    words = ["the", "model", "prunes", "weights", "and", "keeps", "what", "matters", "in", "a", "row"]
    for split in ("valid", "test"):
        idx = torch.randint(len(words), (3000,), generator=rng)
        lines = [" ".join(words[i] for i in idx[k:k + 12].tolist()) for k in range(0, 3000, 12)]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path
