"""``Calibration``: the one value that turns a model's logits into the probabilities and decisions it reports.

A calibration is a frozen value of one method's class (``Uncalibrated``, ``Temperature``, ``Platt``, ``BCTS``,
``VectorScaling``, ``Isotonic``; each in its own module, registered by its ``method`` name). Every method has
its parameters as fields and implements ``_probs`` (logits -> probabilities), ``_module`` (the same as graph
operations, for ONNX), ``_parameters`` (one phrase for ``describe``) and ``fit``. What all methods share is
here: the binary operating threshold and its rule, what it was fitted on, the validation NLL before and after,
the record of an ``auto`` selection; ``probs``, ``decide``, ``describe``, ``as_module`` and the plain dict
stored in a checkpoint (``to_dict`` / ``from_dict``, read with ``torch.load(..., weights_only=True)``)::

    {"method": "temperature", "temperature": 1.7, "threshold": 0.41, "threshold_rule": "youden", ...}

Adding a method is one module with one subclass; a checkpoint's dict from earlier versions reads unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from medimg.errors import CheckpointError
from medimg.evaluation.metrics import predict_labels
from medimg.names import CALIBRATION_FITS

REFIT = "refit it: python -m medimg.evaluate ckpt_path=<ckpt> recalibrate=true"
SHARED = ("threshold", "threshold_rule", "fitted_on", "val_nll_before", "val_nll_after", "selection")


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """What every calibration method has; a subclass per method adds its parameters (see the module doc)."""

    method: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[Calibration]]] = {}

    threshold: float | None = None  # binary: class 1 is called when P(class 1) >= threshold
    threshold_rule: str | None = None
    fitted_on: str | None = None
    val_nll_before: float | None = None
    val_nll_after: float | None = None
    selection: Mapping[str, Any] | None = None  # calibration=auto: the rule, folds, seed, every candidate's NLL

    def __init_subclass__(cls, method: str = "", **kwargs):
        super().__init_subclass__(**kwargs)
        if method:
            cls.method = method
            Calibration.registry[method] = cls

    # ------------------------------------------------------------------------------ what a method implements
    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _module(self, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def _parameters(self) -> str:
        return ""

    def per_class(self) -> dict[str, Sequence[float]]:
        """The parameters that hold one value per class, by name (checked against the model's classes)."""
        return {}

    # ------------------------------------------------------------------------------ using it
    @property
    def is_calibrated(self) -> bool:
        """Whether the probabilities differ from the plain softmax."""
        return self.method != "none"

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, C)`` of ``logits`` ``(N, C)``."""
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"logits must have shape (N, C) with C >= 2, got {tuple(logits.shape)}")
        self.check_classes(logits.shape[1])
        return self._probs(logits)

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Class decisions: the operating threshold on P(class 1) for a binary model that has one, else argmax."""
        return predict_labels(probs, self.threshold)

    def as_module(self, num_classes: int) -> nn.Module:
        """``probs`` as plain tensor operations that export to ONNX (no searchsorted, no branching on data)."""
        self.check_classes(num_classes)
        return self._module(num_classes)

    def check_classes(self, num_classes: int) -> None:
        for name, values in self.per_class().items():
            if len(values) != num_classes:
                raise CheckpointError(f"the {self.method} calibration has {len(values)} values of {name!r} but the "
                                      f"model has {num_classes} classes; {REFIT}")

    def describe(self) -> str:
        """One line for logs and reports."""
        parameters = self._parameters()
        parts = [self.method] + ([parameters] if parameters else [])
        if self.selection:
            scores = ", ".join(f"{k} {v:.4f}" for k, v in self.selection["cv_nll"].items())
            parts.append(f"chosen by {self.selection['folds']}-fold cross-validated validation NLL ({scores})")
        if self.val_nll_before is not None:
            parts.append(f"validation NLL {self.val_nll_before:.4f} -> {self.val_nll_after:.4f}")
        if self.threshold is not None:
            parts.append(f"operating threshold {self.threshold:.4g} ({self.threshold_rule or ''})")
        return ", ".join(parts)

    def replace(self, **changes) -> Calibration:
        """A copy with ``changes`` (for example the threshold chosen after the fit)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------ storing it
    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, floats, strings), as a checkpoint and ONNX metadata store it."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (f.name in SHARED and value is None):
                out[f.name] = _plain(value)
        return out

    @staticmethod
    def from_dict(state: Mapping[str, Any] | Calibration | None) -> Calibration:
        """The value stored as ``state`` (None: the plain softmax); a method or key this version does not know is
        a CheckpointError that says how to refit."""
        if isinstance(state, Calibration):
            return state
        state = dict(state or {"method": "none"})
        method = state.pop("method", "none")
        cls = Calibration.registry.get(method)
        if cls is None:
            raise CheckpointError(f"the checkpoint's calibration names the method {method!r}, which is not one of "
                                  f"{', '.join(CALIBRATION_FITS)}; {REFIT}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(state) - known)
        if unknown:
            raise CheckpointError(f"the checkpoint's {method} calibration has keys {unknown} that this version does "
                                  f"not know; {REFIT}")
        try:
            return cls(**{k: _frozen(v) for k, v in state.items()})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"the checkpoint's {method} calibration cannot be read ({e}); {REFIT}") from None


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def as_tensor(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=like.dtype, device=like.device)


def short(values: Sequence[float]) -> str:
    return ", ".join(f"{float(v):.3g}" for v in values)
