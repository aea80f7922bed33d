"""Fingerprints of pruning masks, computed where the masks live.

The mask cache needs to know whether a candidate prunes exactly the same weights as one evaluated
before. Hashing the masks on the host (copy to the CPU, bit-pack, blake2b) cost a 7B-shaped model 6 s
per candidate on a GPU machine; this fingerprint needs one pass over each mask on its own device and
brings 16 bytes per layer back.

Per layer (``device`` scheme):

1. The bool mask's bytes (each 0 or 1), read eight at a time as int64 words without a copy, are packed
   into one byte per word by the multiply ``w · 0x0102040810204080 >> 56`` (every bit lands in its own
   position of the top byte; nothing carries).
2. Two lanes ``h = Σ_i p_i · k_i mod 2⁶⁴`` over the packed bytes ``p_i`` with fixed odd 64-bit keys
   ``k_i`` (splitmix64 of the position, one stream per lane).

A single changed position changes ``p_i`` by ``±2^b`` (b < 8) and so changes a lane by ``±2^b·k_i``,
which is never 0 mod 2⁶⁴ because ``k_i`` is odd: masks that differ in one position always differ. For
masks that differ more, a lane collides only if the differences cancel; over keys drawn at random that
happens with probability at most 2⁻⁵⁷ per lane (a difference of a packed byte has at most 7 factors of
two), 2⁻¹¹⁴ for both. Integer sums are exact, so the fingerprint is the same on every device and in any
reduction order. The layers' lanes (and names and shapes) are then combined by blake2b on the host.

The ``host`` scheme is the one runs made before this module existed recorded (NumPy ``packbits`` of
each mask, copied to the host, into blake2b); a resumed old run keeps it, so its mask cache still hits.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from .devices import to_host

SCHEMES = ("device", "host")
_PACK = 0x0102040810204080  # byte b of a word (0 or 1) → bit 56 + b of the product
_keys: dict[torch.device, torch.Tensor] = {}


def default_scheme(on_cpu: bool) -> str:
    """``host`` where every mask lives on the CPU (the faster scheme there), else ``device``."""
    return "host" if on_cpu else "device"


def _logical_shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x >>> bits`` on int64 (torch's ``>>`` is arithmetic): the sign copies are masked off."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps mod 2⁶⁴)."""
    x = x + _signed(0x9E3779B97F4A7C15)
    x = (x ^ _logical_shift(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ _logical_shift(x, 27)) * _signed(0x94D049BB133111EB)
    return x ^ _logical_shift(x, 31)


def lane_keys(n: int, device: torch.device) -> torch.Tensor:
    """The first ``n`` keys of both lanes, ``(2, n)`` int64, all odd; grown and kept per device."""
    keys = _keys.get(device)
    if keys is None or keys.shape[1] < n:
        index = torch.arange(max(n, 1), dtype=torch.int64)
        keys = torch.stack([splitmix64(index * 2), splitmix64(index * 2 + 1)]) | 1
        _keys[device] = keys = keys.to(device)
    return keys[:, :n]


def packed_bytes(mask: torch.Tensor) -> torch.Tensor:
    """The mask's bits, eight to an int64 value in [0, 255], in memory order (zero-padded)."""
    flat = mask.contiguous().reshape(-1).view(torch.uint8)
    if flat.numel() % 8:
        flat = torch.nn.functional.pad(flat, (0, 8 - flat.numel() % 8))
    return _logical_shift(flat.view(torch.int64) * _PACK, 56)


def layer_lanes(mask: torch.Tensor) -> torch.Tensor:
    """Two int64 lanes fingerprinting one bool mask, on the mask's device (no host transfer)."""
    packed = packed_bytes(mask)
    return (packed * lane_keys(packed.numel(), mask.device)).sum(-1)


def mask_fingerprint(masks: dict[str, torch.Tensor], scheme: str = "device") -> str:
    """A 32-hex-digit fingerprint of a set of named bool masks (see the module docstring)."""
    digest = hashlib.blake2b(digest_size=16)
    if scheme == "host":
        for name in sorted(masks):
            digest.update(name.encode())
            digest.update(np.packbits(masks[name].cpu().numpy()).tobytes())
        return digest.hexdigest()
    if scheme != "device":
        raise ValueError(f"unknown fingerprint scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
    names = sorted(masks)
    digest.update(b"device-v1")
    for name, lanes in zip(names, to_host([layer_lanes(masks[name]) for name in names])):
        digest.update(f"{name}{tuple(masks[name].shape)}".encode())
        digest.update(lanes.numpy().tobytes())
    return digest.hexdigest()
