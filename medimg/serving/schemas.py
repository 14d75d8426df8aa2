"""The server's JSON responses as pydantic models: they are its OpenAPI schema (``/docs``, ``/openapi.json``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

DISCLAIMER = ("For research use only. Not a medical device: the output must not be used to diagnose, treat or "
              "manage any patient.")


class ErrorBody(BaseModel):
    """Every error: one line that names the problem (and, where there is one, the fix)."""

    detail: str = Field(examples=["file 'notes.txt' has Content-Type text/plain; send images"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    engine: str = Field(description="torch (the checkpoint in PyTorch) or onnx (model.onnx in onnxruntime)")
    num_classes: int


class Preprocessing(BaseModel):
    """How every uploaded image is prepared, as the model's evaluation split was."""

    img_size: int = Field(description="the network's input: img_size x img_size pixels")
    resize: float = Field(description="the shorter side is resized to img_size * resize, then center-cropped")
    mean: list[float] = Field(description="per-channel mean subtracted after scaling RGB to [0, 1]")
    std: list[float] = Field(description="per-channel standard deviation divided by")


class Limits(BaseModel):
    max_files: int = Field(description="images in one request to /predict (/explain takes one)")
    max_file_bytes: int = Field(description="bytes of one uploaded file")
    max_image_pixels: int | None = Field(description="width x height from the image's header; null = no cap")
    max_aspect_ratio: float | None = Field(description="long side / short side; null = no cap")


class HeadlineFigure(BaseModel):
    """One of the training run's headline test figures (final probabilities and decisions), in plain words."""

    metric: str = Field(description="its metrics.json key", examples=["test/accuracy_calibrated"])
    value: float
    low: float | None = Field(None, description="the bootstrap interval's lower bound; null when there is none")
    high: float | None = Field(None, description="the bootstrap interval's upper bound; null when there is none")
    text: str = Field(description="the figure in plain words",
                      examples=["Accuracy (images classified correctly): 93.7% (95% interval 92.1-95.0%)"])


class Metadata(BaseModel):
    class_names: list[str]
    backbone: str | None
    engine: str
    calibrated: bool = Field(description="false: the probabilities are a plain softmax, not calibrated")
    calibration_note: str
    calibration_method: str | None
    threshold: float | None = Field(description="binary models: the operating threshold on P(class 1)")
    decision_rule: str
    preprocessing: Preprocessing
    test_metrics: dict[str, float] = Field(
        description="the training run's test metrics (its metrics.json); empty when the run folder has none")
    headline: list[HeadlineFigure] = Field(
        default_factory=list, description="the training run's headline test figures with their intervals, in plain "
                                          "words (accuracy, balanced accuracy, AUROC, PR-AUC, binary sensitivity "
                                          "and specificity, calibration error); empty when the run folder has none")
    test_images: int | None = Field(None, description="the number of test images the figures come from")
    explain_available: bool = Field(description="false when the server has no checkpoint for Grad-CAM")
    gradcam_method: str
    limits: Limits
    disclaimer: str = DISCLAIMER


class ClassProbability(BaseModel):
    class_name: str
    probability: float


class Decision(BaseModel):
    """The binary decision at the stored operating threshold."""

    positive_class: str
    threshold: float
    positive: bool = Field(description="P(positive_class) >= threshold")


class PredictionSet(BaseModel):
    classes: list[str] = Field(description="the set, the most probable class first")
    coverage: float = Field(description="the share of images whose true class the sets hold, by construction "
                                        "(1 - alpha), on images like the validation images")
    text: str = Field(description="the set in words, e.g. 'at 90% coverage: melanoma, nevus'")


class Referral(BaseModel):
    refer: bool = Field(description="true: the model is not confident enough to answer for this image; a clinician "
                                    "should read it")
    confidence: float = Field(description="the calibrated probability of the decided class")
    threshold: float = Field(description="images of lower confidence are referred: chosen on the training run's "
                                         "validation images so that those kept reached the target accuracy (by "
                                         "the lower bound of its interval)")
    target: float = Field(description="that target accuracy (evaluation.selective.target)")
    reason: str = Field(description="the referral in words, e.g. 'refer: the model is not confident enough "
                                    "(confidence 0.61 < 0.83)'")


class ImageResult(BaseModel):
    filename: str
    prediction: str = Field(description="the decided class: the threshold rule for binary models that have one, "
                                        "else the most probable class")
    probability: float = Field(description="the probability of the decided class")
    probabilities: dict[str, float] = Field(description="every class, in the model's class order")
    top_k: list[ClassProbability] = Field(description="the k most probable classes, most probable first")
    decision: Decision | None = Field(description="binary models with an operating threshold; else null")
    prediction_set: PredictionSet | None = Field(
        default=None, description="the classes the model cannot rule out at the stated coverage (a conformal "
                                  "prediction set fitted on the training run's validation images); null without one")
    referral: Referral | None = Field(
        default=None, description="whether a clinician should read this image because the model is not confident "
                                  "enough; null when the model holds no referral rule")


class PredictResponse(BaseModel):
    engine: str
    calibrated: bool = Field(description="false: plain softmax probabilities (the checkpoint holds no calibration)")
    calibration_note: str
    results: list[ImageResult] = Field(description="one per uploaded image, in upload order")
    disclaimer: str = DISCLAIMER
