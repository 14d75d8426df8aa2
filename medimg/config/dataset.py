"""Settings of the ``dataset`` config group (conf/dataset/): where the images are, how they are split and loaded."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from medimg.config.schema import auto_or_bool, closest, fraction, positive, require
from medimg.names import INTERPOLATIONS, MAX_IMG_SIZE

# the keys each source takes besides the shared ones (conf/dataset/<name>.yaml)
SOURCE_OPTIONS: dict[str, tuple[str, ...]] = {
    "synthetic": ("num_images", "generator_seed", "site_shift"),
    "csv": ("csv", "path_column", "label_column", "group_column", "split_column", "classes", "image_root"),
    "folder": (), "ham10000": (), "chest_xray": (), "fashion_mnist": (),
}


@dataclass(frozen=True)
class SplitSettings:
    val: float            # fraction carved out as validation
    test: float           # fraction carved out as test (when the data have no test split of their own)
    seed: int             # seeds the carving

    def check(self, where: str) -> None:
        fraction(self.val, f"{where}.val")
        fraction(self.test, f"{where}.test")
        require(self.val + self.test < 1, where, f"val + test = {self.val + self.test:g} leaves no training images")


@dataclass(frozen=True)
class DatasetSettings:
    name: str
    source: str
    root: str | None
    img_size: int | None  # null = the backbone's pretrained input size (as the other null keys below)
    split: SplitSettings
    num_folds: int | None
    fold: int
    batch_size: int
    eval_batch_size: int
    num_workers: int
    pin_memory: Any       # auto | true | false
    class_weights: bool
    sampling: str
    augment: bool
    crop_scale: list[float]
    hflip: float
    vflip: float
    rotation: float
    color_jitter: float
    eval_resize: float | None
    mean: list[float] | None
    std: list[float] | None
    interpolation: str | None
    preprocess_from: str | None  # the backbone whose pretrained config fills the null keys (the run's)
    skip_bad_files: bool
    scan_files: bool
    cache: bool
    cache_size: float
    batch_augment: Any    # auto | true | false: with the cache, augment whole uint8 batches on the model's device
    device_resident: Any  # auto | true | false: the training split held on the model's device, batches indexed there
    device_resident_share: float  # auto: the largest share of the GPU's free memory the split may take
    max_image_pixels: int | None
    max_aspect_ratio: float | None
    subgroup_columns: list[str]
    subgroup_bins: dict[str, list[float]]
    extra: dict[str, Any]  # the source's own keys (e.g. synthetic: num_images; csv: csv, path_column ...)

    def check(self, where: str) -> None:
        options = SOURCE_OPTIONS.get(self.source)
        require(options is not None, f"{where}.source", f"{self.source!r} is not one of {', '.join(SOURCE_OPTIONS)}")
        unknown = sorted(set(self.extra) - set(options))
        valid = [*options, *(f.name for f in fields(self) if f.name != "extra")]
        fixes = [f"{where}.{m}" for k in unknown if (m := closest(k, valid))]
        require(not unknown, where, f"unknown keys {', '.join(f'{where}.{k}' for k in unknown)} for "
                                    f"source={self.source} (its own keys: {', '.join(options) or 'none'})"
                                    + (f"; did you mean {', '.join(fixes)}?" if fixes else ""))
        for key in ("batch_size", "eval_batch_size", "cache_size"):
            positive(getattr(self, key), f"{where}.{key}")
        self._check_preprocess(where)
        require(isinstance(self.num_workers, int) and self.num_workers >= 0, f"{where}.num_workers",
                f"must be an integer >= 0, got {self.num_workers!r}")
        auto_or_bool(self.pin_memory, f"{where}.pin_memory")
        auto_or_bool(self.batch_augment, f"{where}.batch_augment")
        require(self.batch_augment is not True or self.cache, f"{where}.batch_augment",
                "true reads whole batches from the decoded cache: set dataset.cache=true, or batch_augment=auto")
        auto_or_bool(self.device_resident, f"{where}.device_resident")
        require(self.device_resident is not True or (self.cache and self.batch_augment is not False),
                f"{where}.device_resident", "true holds the decoded cache on the device and augments whole batches "
                "there: set dataset.cache=true and batch_augment=auto or true, or device_resident=auto")
        require(isinstance(self.device_resident_share, float | int) and 0 < self.device_resident_share <= 1,
                f"{where}.device_resident_share", f"must be in (0, 1], got {self.device_resident_share!r}")
        require(self.sampling in ("shuffle", "balanced"), f"{where}.sampling",
                f"must be shuffle or balanced, got {self.sampling!r}")
        if self.num_folds is not None:
            require(isinstance(self.num_folds, int) and self.num_folds >= 2, f"{where}.num_folds",
                    f"must be null or an integer >= 2, got {self.num_folds!r}")
            require(0 <= self.fold < self.num_folds, f"{where}.fold",
                    f"{self.fold} is outside 0..{self.num_folds - 1} for num_folds={self.num_folds}")
        lo, hi = (list(self.crop_scale) + [None, None])[:2]
        require(len(self.crop_scale) == 2 and 0 < lo <= hi <= 1, f"{where}.crop_scale",
                f"must be [low, high] with 0 < low <= high <= 1, got {list(self.crop_scale)}")
        for key in ("hflip", "vflip"):
            require(0 <= getattr(self, key) <= 1, f"{where}.{key}", "must be a probability in [0, 1]")
        require(0 <= self.color_jitter < 1, f"{where}.color_jitter", "must be in [0, 1)")
        require(self.rotation >= 0, f"{where}.rotation", "must be >= 0 degrees")

    def _check_preprocess(self, where: str) -> None:
        positive(self.img_size, f"{where}.img_size", allow_none=True)
        require(self.img_size is None or self.img_size <= MAX_IMG_SIZE, f"{where}.img_size",
                f"must be at most {MAX_IMG_SIZE} px, got {self.img_size}")
        positive(self.eval_resize, f"{where}.eval_resize", allow_none=True)
        require(self.interpolation is None or self.interpolation in INTERPOLATIONS, f"{where}.interpolation",
                f"must be null (the backbone's) or one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            require(value is None or len(value) == 3, f"{where}.{key}", "must be null (the backbone's) or list "
                                                                         "3 values (R, G, B)")
        require(self.std is None or all(s > 0 for s in self.std), f"{where}.std", "values must be > 0")
        require(self.source != "synthetic" or self.img_size is not None, f"{where}.img_size",
                "the synthetic images are drawn at this size: set a number")

    def option(self, key: str) -> Any:
        """A key of the source's own (``extra``); a clear error when the dataset config lacks it."""
        if key not in self.extra:
            raise_missing(f"dataset.{key}", self.source)
        return self.extra[key]


# the keys that say how images are prepared for the network; null = the backbone's pretrained config
PREPROCESS_KEYS = ("img_size", "eval_resize", "interpolation", "mean", "std")


def raise_missing(key: str, source: str) -> None:
    from medimg.errors import ConfigError

    raise ConfigError(f"config key {key} is missing; dataset.source={source} needs it (see conf/dataset/)")
