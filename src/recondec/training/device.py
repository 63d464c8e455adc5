"""Where and how a step computes: the device, autocast for bf16 / fp16, the memory layout of a batch."""
from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={name} but no CUDA device is available: use trainer.device=cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """torch.autocast for trainer.precision=bf16 / fp16; nothing for fp32."""
    dtype = AMP_DTYPES.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)
