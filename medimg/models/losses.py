"""The training objective: class-weighted cross-entropy, with label smoothing, focal weighting and soft targets.

Targets may be class indices or soft class distributions (mixup and cutmix mix two images and their labels).
Class weights apply to soft targets through each class's share: a sample's loss is
``sum_c t_c * w_c * (1 - p_c)^gamma * -log p_c``, and the batch loss is the sum over samples divided by
``sum_i sum_c t_ic * w_c``. With one-hot targets and ``gamma = 0`` that is exactly PyTorch's weighted
cross-entropy (``F.cross_entropy(..., weight=w)``, a weighted mean). A distilled run adds the soft-target loss
against its teacher's softened outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_targets(targets: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """Class indices (N,) or distributions (N, C) -> distributions, smoothed towards uniform."""
    t = F.one_hot(targets.long(), num_classes).float() if targets.ndim == 1 else targets.float()
    if label_smoothing:
        t = t * (1.0 - label_smoothing) + label_smoothing / num_classes
    return t


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, class_weight: torch.Tensor | None,
                        label_smoothing: float, focal_gamma: float) -> torch.Tensor:
    """Weighted (focal) cross-entropy of ``logits`` (N, C) against hard or soft ``targets``."""
    logits = logits.float()
    if targets.ndim == 1 and focal_gamma == 0:  # the common case, PyTorch's own kernel
        return F.cross_entropy(logits, targets, weight=class_weight, label_smoothing=label_smoothing)
    t = soft_targets(targets, logits.shape[1], label_smoothing)
    log_p = logits.log_softmax(-1)
    per_class = -log_p
    if focal_gamma:
        per_class = per_class * (1.0 - log_p.exp()).pow(focal_gamma)
    w = t if class_weight is None else t * class_weight.to(t.dtype)
    return (w * per_class).sum() / w.sum().clamp_min(1e-12)


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: ``T^2 * KL(teacher || student)`` with the student's logits softened by
    ``T`` (``teacher_probs`` are already softened); the ``T^2`` keeps its gradients on the hard loss's scale."""
    log_p = (student_logits.float() / temperature).log_softmax(-1)
    return F.kl_div(log_p, teacher_probs.float(), reduction="batchmean") * temperature**2
