"""The names a config key can take, one tuple per set: the settings check against these before any work, and
the modules that implement them (Grad-CAM, calibration, test-time augmentation) key their tables by them and
refuse to load when the two differ. Nothing here imports anything: reading a config needs no model code."""

from __future__ import annotations

CAM_METHODS = ("gradcam", "gradcam++", "scorecam", "eigencam", "layercam")  # explain/gradcam.py METHODS
CONFORMAL_SCORES = ("lac", "aps", "raps")  # evaluation/conformal/scores.py SCORES
CALIBRATION_FITS = ("none", "temperature", "platt", "bcts", "vector", "isotonic")  # one fitted method each
CALIBRATION_METHODS = (*CALIBRATION_FITS, "auto")  # auto: the fit with the lowest cross-validated NLL
TTA_VIEWS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")  # evaluation/tta.py VIEWS
ENGINES = ("torch", "onnx")  # engines.py: PyTorch from a checkpoint, onnxruntime from an exported model


def same_names(table, names: tuple[str, ...], what: str) -> None:
    """Refuse an implementation table whose keys are not exactly ``names``, in any order (a method added in one
    place only)."""
    if sorted(table) != sorted(names):
        raise RuntimeError(f"{what}: the table has {tuple(table)} but the names are {names}")

# trainer.precision: auto, or one of Lightning's names (lightning.fabric.connector; a test keeps the two equal)
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true", "64", "32", "16", "bf16")
MODEL_METRICS = ("accuracy", "auroc", "f1_macro")  # models/classifier.py: logged as val/<name>, beside val/loss
VALIDATION_METRICS = ("val/loss", *(f"val/{m}" for m in MODEL_METRICS))  # what monitor can name
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # data/transforms.py: torchvision's tensor resize filters
MAX_IMG_SIZE = 4096  # the largest network input side medimg builds (a 4096 px RGB batch of 32 is 6 GiB)
