"""Class activation maps through ``pytorch_grad_cam``, safe to call anywhere.

``compute_cams`` works under Lightning's inference mode / ``no_grad`` (it re-enables gradients locally and
clones its inputs out of inference mode), removes its hooks when it returns (the CAM object is used as a
context manager), and leaves the model exactly as it found it: every module's train/eval flag, every
parameter's ``requires_grad`` flag and ``.grad``. Frozen blocks therefore stay frozen, and a CAM taken
in the middle of training changes nothing the optimiser sees.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from medimg.errors import ConfigError
from medimg.files import save_figure
from medimg.models.backbones import BackboneInfo, backbone_info
from medimg.names import CAM_METHODS, same_names

METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "scorecam": ScoreCAM,
    "eigencam": EigenCAM,
    "layercam": LayerCAM,
}
same_names(METHODS, CAM_METHODS, "Grad-CAM methods")


def _network(model: nn.Module) -> nn.Module:
    """The network inside an ImageClassifier (``model.net``), or the module itself."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) else model


def backbone_of(model: nn.Module) -> BackboneInfo | None:
    """The BackboneInfo of an ImageClassifier (None for another module)."""
    hparams = getattr(model, "hparams", None)
    backbone = hparams.get("backbone") if hparams is not None else None
    return backbone_info(backbone) if backbone else None


def cam_reshape(model: nn.Module):
    """What turns the target layer's output into (B, C, H, W) maps for this model's backbone (None: it is)."""
    info = backbone_of(model)
    return info.reshape_transform() if info else None


def default_layer_of(model: nn.Module, img_size: int | None = None) -> str:
    """The name of the layer Grad-CAM explains by default in ``model`` (an ImageClassifier) at ``img_size`` px."""
    info = backbone_of(model)
    if info is None:
        raise ConfigError(f"a {type(model).__name__} has no default Grad-CAM layer: name one")
    return info.cam_layer(img_size)


def resolve_layer(model: nn.Module, layer: str | nn.Module | None = None, img_size: int | None = None) -> nn.Module:
    """The module named by ``layer`` inside the network (dotted path, e.g. ``layer4``, ``layer4.1``,
    ``layer3.-1``, ``stages.2``, ``blocks.11.norm1``); None picks the backbone's default for ``img_size`` px
    inputs (the deepest stage when the size is not given). A stage (an ``nn.Sequential`` of blocks) resolves
    to its last block, whose output is the stage's output."""
    if isinstance(layer, nn.Module):
        return layer
    net, info = _network(model), backbone_of(model)
    if layer is None:
        layer = info.cam_layer(img_size) if info else "layer4"
    module: nn.Module = net
    for part in str(layer).split("."):
        children = dict(module.named_children())
        if part.lstrip("-").isdigit() and isinstance(module, nn.Sequential):
            try:
                module = module[int(part)]
                continue
            except IndexError:
                pass
        if part not in children:
            stages = f"; the stages of {info.name}: {[p for p, _ in info.stages]}" if info else ""
            raise ConfigError(
                f"gradcam layer {layer!r}: {part!r} is not a child of {type(module).__name__} "
                f"(children: {sorted(children)}){stages}; use a dotted path such as layer4, layer4.1 or layer3"
            )
        module = children[part]
    if isinstance(module, nn.Sequential) and len(module) > 0:
        module = module[-1]
    return module


@contextlib.contextmanager
def gradients_enabled() -> Iterator[None]:
    """Gradients on, even inside ``torch.inference_mode()`` or ``torch.no_grad()`` (as in Lightning's
    validation, test and predict loops)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag and every parameter's ``requires_grad`` and ``.grad``."""
    training = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag, grad in params:
            p.requires_grad_(flag)
            p.grad = grad


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int] | None = None,
    method: str = "gradcam",
    layer: str | nn.Module | None = None,
    aug_smooth: bool = False,
) -> np.ndarray:
    """CAMs for a batch of normalised images ``(B, 3, H, W)``: float32 ``(B, H, W)`` scaled to [0, 1].

    ``targets`` are class indices (one per image); None explains each image's predicted class.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown gradcam.method={method!r}; choose one of {sorted(METHODS)}")
    if images.ndim != 4:
        raise ValueError(f"compute_cams expects a batch (B, C, H, W), got shape {tuple(images.shape)}")
    target_layer = resolve_layer(model, layer, img_size=int(images.shape[-1]))
    reshape = cam_reshape(model)
    device = next(model.parameters()).device
    with preserved_state(model), gradients_enabled(), torch.autocast(device.type, enabled=False):
        for p in model.parameters():  # gradients reach the layer through the input, never the weights
            p.requires_grad_(False)
        x = images.detach().clone().to(device=device, dtype=torch.float32)  # a normal tensor, not an inference one
        x.requires_grad_(True)
        cam_targets = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
        with _quiet_progress(method), METHODS[method](model=model, target_layers=[target_layer],
                                                      reshape_transform=reshape) as cam:
            if method == "scorecam":
                cam.batch_size = 64
            out = cam(input_tensor=x, targets=cam_targets, aug_smooth=aug_smooth)
            cam.outputs = None  # drop the graph of the last forward
    if out is None:  # pytorch_grad_cam's context manager swallows IndexError and returns nothing
        raise RuntimeError(f"{method} failed on layer {layer!r} (a target class index out of range?)")
    return np.asarray(out, dtype=np.float32)


@contextlib.contextmanager
def _quiet_progress(method: str) -> Iterator[None]:
    """ScoreCAM draws a tqdm progress bar per image; keep the console (and logs) clean."""
    if method != "scorecam":
        yield
        return
    import pytorch_grad_cam.score_cam as score_cam

    original = score_cam.tqdm
    score_cam.tqdm = types.SimpleNamespace(tqdm=lambda iterable, *a, **k: iterable)
    try:
        yield
    finally:
        score_cam.tqdm = original


# ---------------------------------------------------------------------------------------------- pictures
def denormalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised ``(3, H, W)`` tensor back to an ``(H, W, 3)`` float32 RGB array in [0, 1]."""
    x = image.detach().float().cpu()
    m = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
    s = torch.tensor(list(std), dtype=torch.float32)[:, None, None]
    return (x * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


def heatmap(cam: np.ndarray) -> np.ndarray:
    """The CAM as an ``(H, W, 3)`` uint8 RGB jet-coloured heat map."""
    import cv2

    colored = cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0, 1)), cv2.COLORMAP_JET)
    return cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)


def overlay(rgb: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The heat map blended over the RGB image (float [0, 1]); uint8 ``(H, W, 3)``."""
    return show_cam_on_image(np.clip(rgb, 0, 1).astype(np.float32), np.clip(cam, 0, 1), use_rgb=True,
                             image_weight=image_weight)


def save_explanation(path: str | Path, rgb: np.ndarray, cam: np.ndarray, title: str) -> Path:
    """A PNG with the image, the heat map and the overlay side by side, under ``title``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.6))
    for ax, img, name in zip(axes, (rgb, heatmap(cam), overlay(rgb, cam)), ("image", "heat map", "overlay")):
        ax.imshow(img)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return Path(path)
