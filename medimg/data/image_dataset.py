"""A torch Dataset over the rows of a data table, with augmentation that a seed fixes per image and epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch.utils.data import Dataset

from medimg.data.readers import read_image
from medimg.data.sampling import seeded_rng
from medimg.errors import DataError


class ImageDataset(Dataset):
    """Yields ``(image tensor, class index, row index)`` for each row of ``table``.

    An index may come as ``(row, seed)`` (from ``EpochSampler``): the transform's random draws then come from
    ``seed``, so an image's augmentation depends only on the run's seed, the epoch and its place in the epoch,
    not on which loader worker reads it or whether the run was interrupted and resumed.
    """

    def __init__(self, table: pd.DataFrame, class_names: Sequence[str], transform: Callable,
                 reader: Callable = read_image):
        self.paths = table["path"].tolist()
        index = {c: i for i, c in enumerate(class_names)}
        unknown = sorted(set(table["label"]) - set(index))
        if unknown:
            raise DataError(f"labels {unknown} are not among the classes {list(class_names)}")
        self.targets = torch.tensor([index[c] for c in table["label"]], dtype=torch.long)
        self.transform = transform
        self.reader = reader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        image = self.reader(self.paths[i])
        if seed is None:
            return self.transform(image), self.targets[i], i
        with seeded_rng(seed):
            return self.transform(image), self.targets[i], i
