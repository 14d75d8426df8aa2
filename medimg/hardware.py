"""What the machine can do fast: resolve the ``auto`` precision, channels_last and determinism settings."""

from __future__ import annotations

import torch


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix units (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, c, lambda: False)()) for c in checks)


def resolve_accelerator(accelerator: str) -> str:
    if accelerator == "auto":
        if torch.cuda.is_available():
            return "gpu"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return "gpu" if accelerator == "cuda" else accelerator


def resolve_precision(precision, accelerator: str) -> str:
    """``auto`` -> bf16-mixed on GPUs that support it (else 16-mixed) and on bf16-capable CPUs, else 32."""
    if precision not in ("auto", None):
        return str(precision)
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator == "cpu" and cpu_has_fast_bf16():
        return "bf16-mixed"
    return "32-true"


def resolve_channels_last(channels_last, accelerator: str, precision: str) -> bool:
    """``auto`` -> channels_last on GPUs and with bf16 on CPU (where oneDNN's NHWC kernels win)."""
    if channels_last != "auto":
        return bool(channels_last)
    return accelerator == "gpu" or (accelerator == "cpu" and precision.startswith("bf16"))


def resolve_deterministic(deterministic, accelerator: str):
    if deterministic != "auto":
        return deterministic
    return accelerator == "cpu"
