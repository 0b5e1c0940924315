"""Mixed precision for the frozen networks: one rule for CLIP, the LaRE branch and scoring."""

from __future__ import annotations

import contextlib

import torch

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision only on GPU: on CPU fp32 is both faster and exact."""
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=_AUTOCAST_DTYPES[precision])
