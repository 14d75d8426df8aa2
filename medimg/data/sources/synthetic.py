"""The built-in synthetic set as a data table (generated on first use)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medimg.data.sources.folder import folder_table
from medimg.data.synthetic import CLASSES, generate


def synthetic_table(root: str | Path, num_images: int, img_size: int, generator_seed: int,
                    site_shift: float = 0.0) -> tuple[pd.DataFrame, list[str]]:
    root = Path(root)
    generate(root, num_images=num_images, img_size=img_size, seed=generator_seed, site_shift=site_shift)
    df, _ = folder_table(root / "images")
    return df, list(CLASSES)
