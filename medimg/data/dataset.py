"""A torch Dataset over the rows of a data table."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch.utils.data import Dataset

from medimg.data.readers import read_image


class ImageTable(Dataset):
    """Yields ``(image tensor, class index, row index)`` for each row of ``table``."""

    def __init__(self, table: pd.DataFrame, class_names: Sequence[str], transform: Callable,
                 reader: Callable = read_image):
        self.paths = table["path"].tolist()
        index = {c: i for i, c in enumerate(class_names)}
        unknown = sorted(set(table["label"]) - set(index))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the classes {list(class_names)}")
        self.targets = torch.tensor([index[c] for c in table["label"]], dtype=torch.long)
        self.transform = transform
        self.reader = reader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(self.reader(self.paths[i])), self.targets[i], i
