"""What ``auto`` means on this machine, decided once per run: accelerator, precision, determinism,
channels_last, pinned memory, the live per-step loss.

``auto`` is the only word for "decide for me"; every resolver here reads it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medimg.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    accelerator: str        # cpu | gpu | mps
    precision: str          # 32-true | bf16-mixed | 16-mixed | ... (Lightning's names)
    deterministic: bool | str   # true | false | warn (Lightning's values)
    channels_last: bool
    pin_memory: bool
    live_step_loss: bool    # the per-step loss in the progress bar (a host sync every step)
    batch_augment: bool = False  # training batches augmented whole on the device (dataset.batch_augment)

    @property
    def cudnn_benchmark(self) -> bool:
        """GPUs without deterministic kernels let cuDNN pick the fastest convolution for each shape."""
        return self.accelerator == "gpu" and self.deterministic is False

    @property
    def device_type(self) -> str:
        return {"gpu": "cuda"}.get(self.accelerator, self.accelerator)


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
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is available here; use "
                          "trainer.accelerator=auto (or cpu), or trainer=cpu")
    return "gpu" if accelerator == "cuda" else accelerator


def resolve_precision(precision, accelerator: str) -> str:
    """``auto`` -> bf16-mixed on GPUs that support it (else 16-mixed) and on bf16-capable CPUs, else 32-true."""
    if precision != "auto":
        return str(precision)
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator == "cpu" and cpu_has_fast_bf16():
        return "bf16-mixed"
    return "32-true"


def auto_flag(setting, auto_value: bool) -> bool:
    """A true/false setting that also takes ``auto`` (then ``auto_value``)."""
    return auto_value if setting == "auto" else bool(setting)


def resolve_runtime(accelerator: str, precision, deterministic, channels_last, pin_memory,
                    step_loss_in_bar, batch_augment=False) -> Runtime:
    """Every ``auto`` of a run decided for this machine (trainer, model and dataset keys of the same names)."""
    acc = resolve_accelerator(accelerator)
    prec = resolve_precision(precision, acc)
    return Runtime(
        accelerator=acc,
        precision=prec,
        deterministic=(acc == "cpu") if deterministic == "auto" else deterministic,  # GPUs: cudnn benchmark
        channels_last=auto_flag(channels_last, acc == "gpu" or (acc == "cpu" and prec.startswith("bf16"))),
        pin_memory=auto_flag(pin_memory, acc == "gpu"),
        live_step_loss=auto_flag(step_loss_in_bar, acc == "cpu"),
        # on a GPU the augmentation is free there; on a CPU the loader workers augment alongside the step, which
        # measured faster than augmenting whole batches in the training process (BENCHMARKS.md)
        batch_augment=auto_flag(batch_augment, acc == "gpu"),
    )
