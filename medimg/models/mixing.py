"""Mixup and cutmix of training images with their labels, through timm's ``Mixup``.

timm draws the mixing weights from NumPy's random state (seeded per training step by medimg, so a resumed run
mixes as the uninterrupted one did) and returns soft targets; label smoothing is applied by medimg's loss, so
timm's own smoothing stays off.
"""

from __future__ import annotations


def build_mixer(mixup_alpha: float, cutmix_alpha: float, mix_prob: float, num_classes: int):
    """timm's Mixup for these settings, or None when both alphas are 0."""
    if not (mixup_alpha or cutmix_alpha) or not mix_prob:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mix_prob, switch_prob=0.5,
                 mode="batch", label_smoothing=0.0, num_classes=num_classes)
