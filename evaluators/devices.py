"""Where a model runs and in what precision: the one place device and dtype names are read.

Devices: ``cpu``, ``cuda``, ``cuda:N`` and ``auto`` (accelerate's ``device_map="auto"``: the model spread
over the visible GPUs, and the CPU once they are full; plain ``cpu`` where there is no GPU). Dtypes:
``float32``, ``bfloat16``, ``float16``; the default is float32 on the CPU and bfloat16 on a GPU.

Whatever the model's dtype, statistics accumulate in float32 and scores are computed in float32 one
layer at a time. A per-weight statistic (``G``, ``R``) is *stored* in float32 beside a float32 model and in
bfloat16 beside a 16-bit one (bfloat16 for float16 models too, for its float32 range): held in float32
next to a bfloat16 LLaMA-7B it would take 24 GiB, twice the model.
"""
from __future__ import annotations

import re

import torch
from torch import nn

DEVICES = "cpu, cuda, cuda:N or auto"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(ValueError):
    """A device or dtype that cannot be used here; the message is one line for the user."""


def resolve_device(spec: str | None) -> str:
    """A checked device name: ``cpu``, ``cuda:N`` or ``auto`` (``auto`` only where CUDA exists)."""
    spec = (spec or "cpu").strip().lower()
    if spec == "cpu":
        return "cpu"
    if spec == "auto":
        return "auto" if torch.cuda.is_available() else "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise DeviceError(f"unknown device {spec!r}; use {DEVICES}")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r} asked for, but CUDA is not available here "
                          f"(torch {torch.__version__}); use --device cpu")
    index = int(match[1] or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return f"cuda:{index}"


def resolve_dtype(spec: str | None, device: str) -> torch.dtype:
    """The dtype named by ``spec``; empty or ``None``: float32 on the CPU, bfloat16 on a GPU."""
    if not spec:
        return torch.float32 if device == "cpu" else torch.bfloat16
    if spec not in DTYPES:
        raise DeviceError(f"unknown dtype {spec!r}; use {', '.join(DTYPES)}")
    return DTYPES[spec]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def statistic_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """How a per-weight statistic is stored beside a model of ``model_dtype`` (module docstring)."""
    return torch.float32 if model_dtype in (torch.float32, torch.float64) else torch.bfloat16


def input_device(model: nn.Module) -> torch.device:
    """Where the model's token ids go: the device of its input embeddings (the first one under ``auto``)."""
    return model.get_input_embeddings().weight.device


def model_dtype(model: nn.Module) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype


def to_host(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Equally shaped small results of many layers on the CPU, in order: one transfer (and one wait) per
    device instead of one per layer."""
    out: list = [None] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, tensor in enumerate(tensors):
        by_device.setdefault(tensor.device, []).append(i)
    for indices in by_device.values():
        for i, row in zip(indices, torch.stack([tensors[i] for i in indices]).cpu()):
            out[i] = row
    return out


def room_for_copy(tensors: list[torch.Tensor], share: float = 0.5) -> bool:
    """Whether a copy of ``tensors`` takes at most ``share`` of the free memory of each accelerator they are
    on (the CPU always has room: its copy is the one the evaluator restores from there)."""
    needed: dict[torch.device, int] = {}
    for tensor in tensors:
        if tensor.device.type != "cpu":
            needed[tensor.device] = needed.get(tensor.device, 0) + tensor.numel() * tensor.element_size()
    if any(device.type != "cuda" for device in needed):
        return False
    return all(size <= share * torch.cuda.mem_get_info(device)[0] for device, size in needed.items())
