"""Localisation scores (pointing game, energy in mask) and ROAD faithfulness: pure functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medimg.explain.faithfulness import road_scores
from medimg.explain.localisation import energy_in_mask, localisation_scores, pointing_hit


def _mask(h=20, w=20, box=(5, 10, 5, 10)):
    m = np.zeros((h, w), bool)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_pointing_hit_inside_and_outside():
    mask = _mask()
    cam = np.zeros((20, 20))
    cam[7, 7] = 1.0
    assert pointing_hit(cam, mask)
    cam = np.zeros((20, 20))
    cam[15, 15] = 1.0
    assert not pointing_hit(cam, mask)


def test_pointing_tolerance_counts_near_misses():
    mask = _mask()
    cam = np.zeros((20, 20))
    cam[7, 12] = 1.0  # two columns right of the box (x in 5..9)
    assert not pointing_hit(cam, mask)
    assert not pointing_hit(cam, mask, tolerance=2)
    assert pointing_hit(cam, mask, tolerance=3)


def test_constant_cam_points_nowhere():
    assert not pointing_hit(np.zeros((20, 20)), _mask())
    assert not pointing_hit(np.full((20, 20), 0.5), np.ones((20, 20), bool))


def test_energy_in_mask():
    mask = _mask()  # 25 of 400 pixels
    assert energy_in_mask(np.ones((20, 20)), mask) == pytest.approx(25 / 400)
    assert energy_in_mask(mask.astype(float), mask) == pytest.approx(1.0)
    cam = np.zeros((20, 20))
    cam[mask] = 1.0
    cam[0, 0] = 25.0  # as much mass outside as inside
    assert energy_in_mask(cam, mask) == pytest.approx(0.5)
    assert math.isnan(energy_in_mask(np.zeros((20, 20)), mask))


def test_shapes_must_match():
    with pytest.raises(ValueError, match="one shape"):
        pointing_hit(np.zeros((4, 4)), np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="NaN"):
        pointing_hit(np.full((4, 4), np.nan), np.zeros((4, 4), bool))


def test_localisation_scores_aggregate():
    mask = _mask()
    good = mask.astype(float)
    bad = np.zeros((20, 20))
    bad[19, 19] = 1.0
    empty = np.zeros((20, 20))
    s = localisation_scores(np.stack([good, bad, empty, good]), np.stack([mask] * 4))
    assert s["n"] == 4
    assert s["pointing_game"] == pytest.approx(0.5)
    assert s["empty_cams"] == 1
    assert s["energy_in_mask"] == pytest.approx((1 + 0 + 1) / 3)  # the empty map is left out of the mean
    assert s["chance"] == pytest.approx(25 / 400)


class _Spot(torch.nn.Module):
    """Class 1's logit is the mean of the image inside a fixed square; class 0's is zero."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        s = x[:, :, 4:12, 4:12].mean(dim=(1, 2, 3)) * 4 - 2 + self.dummy
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_road_ranks_the_true_evidence_above_its_complement():
    torch.manual_seed(0)
    x = 0.1 * torch.rand(3, 3, 16, 16)
    x[:, :, 4:12, 4:12] += 1.0  # a bright square: class 1 is fairly confident, and only because of the square
    right = np.zeros((3, 16, 16), np.float32)
    right[:, 4:12, 4:12] = 1.0
    right += 0.01 * np.random.default_rng(0).random(right.shape, dtype=np.float32)  # no ties
    wrong = 1.01 - right
    good = road_scores(_Spot(), x, right, [1, 1, 1], percentiles=[50, 70])
    bad = road_scores(_Spot(), x, wrong, [1, 1, 1], percentiles=[50, 70])
    assert set(good) == {"morf", "lerf", "combined"} and good["combined"].shape == (3,)
    np.testing.assert_allclose(good["combined"], (good["lerf"] - good["morf"]) / 2)
    assert good["combined"].mean() > bad["combined"].mean()
    assert good["morf"].mean() < 0  # removing the evidence lowers the probability


def test_road_needs_one_cam_per_image():
    with pytest.raises(ValueError, match="one cam and one target per image"):
        road_scores(_Spot(), torch.rand(2, 3, 16, 16), np.zeros((3, 16, 16)), [1, 1])


def test_resolution_ceiling():
    from medimg.explain.sanity import resolution_ceiling

    masks = np.zeros((2, 96, 96), bool)
    masks[0, 40:56, 40:56] = True  # covers the centre cell's centre (47.5) of a 3x3 map
    masks[1, 20:30, 20:30] = True  # between the centres 15.5 and 47.5
    assert resolution_ceiling(masks, (3, 3)) == pytest.approx(0.5)
    assert resolution_ceiling(masks, (12, 12)) == pytest.approx(1.0)  # centres every 8 px


def test_randomised_copy_keeps_architecture_not_weights():
    from medimg.explain.sanity import randomised_copy
    from tests.conftest import make_classifier

    m = make_classifier(["a", "b"])
    r = randomised_copy(m, seed=1)
    sd, rd = m.state_dict(), r.state_dict()
    assert sd.keys() == rd.keys() and all(sd[k].shape == rd[k].shape for k in sd)
    assert not torch.equal(sd["net.layer4.0.conv1.weight"], rd["net.layer4.0.conv1.weight"])
    assert torch.equal(rd["net.conv1.weight"], randomised_copy(m, seed=1).state_dict()["net.conv1.weight"])
    assert not r.training
