"""Error gallery: the selection picks the right images from constructed predictions; the pictures come from the
dataset rows with their CAMs; an empty map falls back to another method, or is labelled empty, and its panel says
so; the figures, report links and TensorBoard path through write_evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.transforms import v2

from medimg.evaluation.analyses import analyse, evaluation_options
from medimg.evaluation.calibration import Temperature
from medimg.evaluation.error_gallery import Gallery, gallery_figures, gallery_pictures, select_gallery
from medimg.evaluation.evaluator import evaluation_from_outputs, write_evaluation
from medimg.evaluation.plots import close_figures
from medimg.evaluation.predictions import SplitOutputs

NAMES = ["benign", "malignant", "other"]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def test_selection_picks_top_losses_and_least_confident_correct():
    probs = torch.tensor([
        [0.90, 0.05, 0.05],  # 0: class 0, right, sure
        [0.10, 0.80, 0.10],  # 1: class 0, wrong (P(true) 0.10)
        [0.40, 0.35, 0.25],  # 2: class 0, right, unsure (0.40)
        [0.30, 0.60, 0.10],  # 3: class 0, wrong (0.30)
        [0.02, 0.03, 0.95],  # 4: class 0, wrong (0.02): the top loss
        [0.55, 0.25, 0.20],  # 5: class 0, right (0.55)
        [0.20, 0.70, 0.10],  # 6: class 1, right (0.70)
        [0.10, 0.50, 0.40],  # 7: class 1, right (0.50)
        [0.05, 0.90, 0.05],  # 8: class 2, wrong (0.05)
    ])
    targets = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2])
    sel = select_gallery(probs, targets, probs.argmax(1), per_class=2)
    assert sel["mistakes"] == {0: [4, 1], 1: [], 2: [8]}
    assert sel["unsure_correct"] == {0: [2, 5], 1: [7, 6], 2: []}
    # binary decisions at an operating threshold decide what is a mistake
    p2 = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    t2 = torch.tensor([1, 0, 1])
    sel2 = select_gallery(p2, t2, (p2[:, 1] >= 0.35).long(), per_class=3)
    assert sel2["mistakes"] == {0: [1], 1: [0]}  # P(1) 0.4 >= 0.35 calls class 1; 0.3 < 0.35 misses it
    assert sel2["unsure_correct"] == {0: [], 1: [2]}


class _Images(torch.utils.data.Dataset):
    """Normalised 32 px images; row i is a bright square at a place that depends on i."""

    def __init__(self, n: int):
        self.images = []
        for i in range(n):
            x = torch.zeros(3, 32, 32)
            x[:, (i % 4) * 6:(i % 4) * 6 + 10, 4:14] = 1.0
            self.images.append((x - 0.5) / 0.25)
        self.read = []

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.read.append(i)
        return self.images[i], 0, i


def _net():
    torch.manual_seed(0)
    return resnet18(num_classes=3).eval()


def test_pictures_are_read_by_row_and_explained():
    ds = _Images(10)
    rows = torch.tensor([9, 3, 7, 1])  # evaluation position -> dataset row
    preds = torch.tensor([0, 2, 1, 1])
    pics = gallery_pictures(_net(), ds, rows, [1, 3, 1], preds, MEAN, STD, "gradcam", "layer4")
    assert sorted(pics) == [1, 3] and ds.read == [3, 1]  # each position once, read by its row
    rgb, cam, method = pics[1]
    assert rgb.shape == (32, 32, 3) and cam.shape == (32, 32) and method in ("gradcam", "gradcam++", "layercam", None)
    np.testing.assert_allclose(rgb, ds.images[3].permute(1, 2, 0).numpy() * 0.25 + 0.5, atol=1e-6)
    assert 0 <= cam.min() and cam.max() <= 1
    assert gallery_pictures(_net(), ds, rows, [], preds, MEAN, STD, "gradcam", "layer4") == {}


def _evaluation(n: int = 24):
    g = torch.Generator().manual_seed(3)
    targets = torch.arange(n) % 3
    logits = torch.randn(1, n, 3, generator=g) * 2
    table = pd.DataFrame({"path": [f"img_{i}.png" for i in range(n)], "label": [NAMES[t] for t in targets],
                          "group": "", "split": "test", "site": ["a", "b"] * (n // 2)})
    outputs = SplitOutputs(logits=logits, targets=targets, rows=torch.arange(n))
    return evaluation_from_outputs(outputs, table, NAMES, Temperature(temperature=1.5))


def _options(evaluation: dict, subgroup_columns: list[str]):
    """The ``evaluation`` block read as a command reads it, with the data set's subgroup columns."""
    from medimg.config.evaluation import EvaluationSettings
    from medimg.config.schema import read

    return evaluation_options(read(EvaluationSettings, evaluation, "evaluation"), subgroup_columns, None)


OPTIONS = {"bootstrap_resamples": 100, "interval_level": 0.9, "bootstrap_seed": 0,
           "subgroup_metrics": ["accuracy"], "subgroup_min_images": 5, "gallery_per_class": 2,
           "gallery_method": "gradcam", "gallery_layer": "layer4", "figures": True,
           "conformal": {"alpha": 0.1, "score": "lac", "mondrian": False}, "selective": {"target": 0.95, "level": 0.95}}


def test_gallery_through_the_evaluation_files(tmp_path):
    ev = _evaluation()
    options = _options(OPTIONS, ["site"])
    eval_tf = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    ev = analyse(ev, options, _net(), _Images(24), eval_tf)
    assert isinstance(ev.gallery, Gallery) and ev.gallery.method == "gradcam"
    chosen = {p for kind in ev.gallery.selection.values() for ps in kind.values() for p in ps}
    assert chosen == set(ev.gallery.pictures) and 0 < len(chosen) <= 2 * 2 * 3
    figs = gallery_figures(ev.gallery, NAMES)
    assert set(figs) == {"error_gallery_mistakes", "error_gallery_unsure_correct"}
    assert len(figs["error_gallery_mistakes"].axes) == 3 * 2 * 2  # classes x (image, overlay) x per_class
    close_figures(figs)
    paths = write_evaluation(ev, tmp_path)
    for name in ("error_gallery_mistakes", "error_gallery_unsure_correct", "subgroups"):
        assert paths[name].is_file() and paths[name].stat().st_size > 5000
    report = (tmp_path / "report.md").read_text()
    assert "(figures/error_gallery_mistakes.png)" in report and "(figures/error_gallery_unsure_correct.png)" in report
    assert "| site | a |" in report and (tmp_path / "subgroups.csv").is_file()


def test_no_gallery_without_a_model_or_when_turned_off():
    ev = _evaluation()
    ev = analyse(ev, _options(OPTIONS, []))  # a fold ensemble: no model to explain
    assert ev.gallery is None and ev.subgroups is None
    off = _options({**OPTIONS, "gallery_per_class": 0}, [])
    ev2 = _evaluation()
    ev2 = analyse(ev2, off, _net(), _Images(24), v2.Compose([v2.Normalize(MEAN, STD)]))
    assert ev2.gallery is None


def test_options_are_read_strictly():
    from medimg.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluation.gallery_method"):
        _options({k: v for k, v in OPTIONS.items() if k != "gallery_method"}, [])
    with pytest.raises(ConfigError, match="interval_level"):
        _options({**OPTIONS, "interval_level": 95}, [])
    with pytest.raises(ConfigError, match="evaluation.gallery_method: 'gradcampp' is not one of"):
        _options({**OPTIONS, "gallery_method": "gradcampp"}, [])


class _Pair(nn.Module):
    """Two channels: the positive part of the image's first channel (the bright square), and that plus one."""

    def forward(self, x):
        a = torch.relu(x[:, :1])
        return torch.cat([a, a + 1], 1)


class _Weighed(nn.Module):
    """``features`` then global average pooling and a head whose class 0 weighs the two channels ``w``: with
    w = (0.1, -1) Grad-CAM's map is relu(0.1 A0 - (A0 + 1)) = 0 everywhere while Grad-CAM++ (positive gradients
    only) draws A0; with w = (-0.1, -1) every gradient is negative and every method's map is empty."""

    def __init__(self, w: tuple[float, float]):
        super().__init__()
        self.features = _Pair()
        self.head = nn.Linear(2, 3)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[0] = torch.tensor(w)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def _gallery_titles(model) -> tuple[Gallery, list[str]]:
    ds, rows, preds = _Images(4), torch.arange(4), torch.zeros(4, dtype=torch.long)
    pictures = gallery_pictures(model, ds, rows, [0, 1], preds, MEAN, STD, "gradcam", "features")
    probs = torch.tensor([[0.2, 0.7, 0.1]] * 2 + [[0.9, 0.05, 0.05]] * 2)
    g = Gallery(selection={"mistakes": {0: [], 1: [0, 1], 2: []}, "unsure_correct": {0: [], 1: [], 2: []}},
                probs=probs, targets=torch.tensor([1, 1, 0, 0]), preds=preds, pictures=pictures, method="gradcam")
    fig = gallery_figures(g, NAMES)["error_gallery_mistakes"]
    titles = [ax.get_title() for ax in fig.axes]
    close_figures({"f": fig})
    return g, titles


def test_an_empty_gradcam_map_falls_back_to_gradcam_pp_and_says_so():
    from medimg.explain.gradcam import compute_cams

    model = _Weighed((0.1, -1.0))
    images = torch.stack([_Images(4)[i][0] for i in (0, 1)])
    assert compute_cams(model, images, [0, 0], "gradcam", "features").max() == 0  # the empty map, for real
    g, titles = _gallery_titles(model)
    for p in (0, 1):
        assert g.pictures[p][1].max() - g.pictures[p][1].min() > 0.5  # a map that shows the square
    assert titles.count("gradcam++ (predicted class)\ngradcam map empty") == 2, titles


def test_a_map_empty_for_every_method_is_labelled_empty():
    g, titles = _gallery_titles(_Weighed((-0.1, -1.0)))
    assert all(g.pictures[p][1].max() == 0 for p in (0, 1))
    assert titles.count("empty gradcam map\n(gradcam++, layercam: empty too)") == 2, titles
    assert not any(t == "gradcam (predicted class)" for t in titles)
