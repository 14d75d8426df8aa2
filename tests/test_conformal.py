"""Split conformal sets: equal to MAPIE 1.6's set for set (LAC, APS, randomised APS; RAPS given MAPIE's fitted
settings; Mondrian LAC per class), coverage at the target on exchangeable data (per class for Mondrian, a rare
hard class included), the interval metrics, the stored dict through torch.save/load(weights_only=True), and one
clear message per mistake."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import betabinom

from medimg.errors import CheckpointError, ConfigError
from medimg.evaluation.conformal import Conformal, coverage_curve, needed_images, set_metrics
from medimg.evaluation.conformal.plots import coverage_figure
from medimg.evaluation.conformal.scores import uniforms

mapie_classification = pytest.importorskip("mapie.classification")


class Given:
    """A prefit scikit-learn-style classifier whose probabilities are given: X is the row index."""

    def __init__(self, probs: np.ndarray):
        self.probs, self.classes_ = probs, np.arange(probs.shape[1])

    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        return self.probs[np.asarray(X)[:, 0].astype(int)]

    def predict(self, X):
        return self.predict_proba(X).argmax(1)


class Draws(np.random.RandomState):
    """MAPIE's uniform draws replaced: the given arrays in turn, then ones. MAPIE's APS/RAPS calibration score is
    ``cumsum - u * p``; at u = 1 it is the deterministic score used here (the mass ranked above the label)."""

    def __init__(self, *draws: np.ndarray):
        super().__init__(0)
        self.draws = list(draws)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self.draws.pop(0).reshape(size) if self.draws else np.ones(size)


def _probs(n: int, c: int, seed: int, spread: float = 1.5, sample: bool = False, boost: float = 1.2):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    p = (torch.randn(n, c, generator=g, dtype=torch.float64) * spread
         + torch.nn.functional.one_hot(y, c) * boost).softmax(-1)
    if sample:  # labels drawn from the probabilities: calibrated, exchangeable
        y = torch.multinomial(p, 1, generator=g).squeeze(1)
    return p, y


def _mapie(probs, y, cal, test, score, alpha, rng=None, last=True):
    m = mapie_classification.SplitConformalClassifier(Given(probs), confidence_level=1 - alpha,
                                                      conformity_score=score, prefit=True, random_state=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.conformalize(cal.reshape(-1, 1), y[cal])
        _, sets = m.predict_set(test.reshape(-1, 1), conformity_score_params={"include_last_label": last})
    return sets[:, :, 0], m._mapie_classifier.conformity_score_function_


@pytest.fixture(scope="module")
def split():
    p, y = _probs(2077, 6, seed=3)
    return p.numpy(), y.numpy(), np.arange(577), np.arange(577, 2077)


@pytest.mark.parametrize("alpha", [0.1, 0.05, 0.2])
@pytest.mark.parametrize("score,randomized", [("lac", False), ("aps", False), ("aps", True)])
def test_sets_equal_mapie(split, score, randomized, alpha):
    probs, y, cal, test = split
    rule = Conformal.fit(torch.from_numpy(probs[cal]), torch.from_numpy(y[cal]), score, alpha,
                         randomized=randomized, seed=5)
    draws = (uniforms(5, 0, len(cal)).numpy(), uniforms(5, 1, len(test)).numpy()) if randomized else ()
    ref, cs = _mapie(probs, y, cal, test, score, alpha, Draws(*draws), "randomized" if randomized else True)
    assert rule.quantile == pytest.approx(float(cs.quantiles_[0]), abs=1e-12)
    ours = rule.sets(torch.from_numpy(probs[test])).numpy()
    assert ours.shape == ref.shape and (ours == ref).all(), np.flatnonzero((ours != ref).any(1))
    assert 1 < ours.sum(1).mean() < probs.shape[1]  # the sets are neither trivial nor full


@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_raps_sets_equal_mapie_given_its_fitted_settings(alpha):
    """MAPIE tunes k_reg and the penalty on 20% of the calibration images and charges the penalty at the true
    label's own rank in its calibration score, but its include-last sets at the rank before: given its fitted
    (threshold, penalty, k_reg) the sets are equal; refitted on the same images the threshold here pairs score
    and set exactly, so it is no higher and every set is inside MAPIE's."""
    p, y = _probs(2077, 10, seed=3, boost=3.0)  # a good model of 10 classes: k_reg < 10, the penalty acts
    probs, y, cal, test = p.numpy(), y.numpy(), np.arange(577), np.arange(577, 2077)
    ref, cs = _mapie(probs, y, cal, test, "raps", alpha, Draws())
    penalty, k_reg, q = float(cs.lambda_star), int(cs.k_star[0]), float(cs.quantiles_[0])
    given = Conformal(score="raps", alpha=alpha, quantile=q, penalty=penalty, k_reg=k_reg)
    sets = given.sets(torch.from_numpy(probs[test])).numpy()
    assert (sets == ref).all()
    assert (sets != Conformal(score="aps", alpha=alpha, quantile=q).sets(torch.from_numpy(probs[test])).numpy()).any()
    rest = np.setdiff1d(cal, cs.X_raps[:, 0])
    refit = Conformal.fit(torch.from_numpy(probs[rest]), torch.from_numpy(y[rest]), "raps", alpha,
                          penalty=penalty, k_reg=k_reg)
    assert refit.quantile <= q and not (refit.sets(torch.from_numpy(probs[test])).numpy() & ~ref).any()


def test_mondrian_equals_mapie_per_class_and_a_hand_computation(split):
    """MAPIE 1.6 has no Mondrian wrapper: LAC is MAPIE fitted on each class's calibration images, read in that
    class's column (its APS refuses a one-class target), APS a numpy computation per class."""
    probs, y, cal, test = split
    alpha, pc, yc = 0.1, torch.from_numpy(probs[cal]), torch.from_numpy(y[cal])
    lac = Conformal.fit(pc, yc, "lac", alpha, mondrian=True).sets(torch.from_numpy(probs[test])).numpy()
    aps = Conformal.fit(pc, yc, "aps", alpha, mondrian=True).sets(torch.from_numpy(probs[test])).numpy()
    above = ((probs[:, None, :] > probs[:, :, None]) * probs[:, None, :]).sum(2)  # mass ranked above each label
    for k in range(probs.shape[1]):
        rows = cal[y[cal] == k]
        ref, _ = _mapie(probs, y, rows, test, "lac", alpha)
        assert (lac[:, k] == ref[:, k]).all()
        q = np.sort(above[rows, k])[math.ceil((len(rows) + 1) * (1 - alpha)) - 1]
        assert (aps[:, k] == (above[test, k] <= q + 1e-8)).all()


@pytest.mark.parametrize("alpha", [0.1, 0.05])
@pytest.mark.parametrize("score,randomized", [("lac", False), ("aps", False), ("aps", True), ("raps", False),
                                              ("raps", True)])
def test_coverage_is_the_target_on_exchangeable_data(score, randomized, alpha):
    p, y = _probs(7000, 10, seed=11, spread=2.0, sample=True)
    rule = Conformal.fit(p[:2000], y[:2000], score, alpha, randomized=randomized)
    sets = rule.sets(p[2000:])
    coverage = sets[torch.arange(5000), y[2000:]].double().mean().item()
    assert abs(coverage - (1 - alpha)) <= 0.03, (rule.describe(), coverage)


def test_mondrian_covers_every_class_a_rare_hard_one_included():
    g = torch.Generator().manual_seed(2)
    n, alpha = 14000, 0.1
    y = torch.multinomial(torch.tensor([0.35, 0.35, 0.25, 0.05]), n, replacement=True, generator=g)
    strength = torch.where(y == 3, 0.2, 2.0).double()[:, None]  # the model is poor on the rare class 3
    p = (torch.randn(n, 4, generator=g, dtype=torch.float64) + strength * torch.nn.functional.one_hot(y, 4)).softmax(-1)
    names = ["a", "b", "c", "rare"]
    cal, test = slice(0, 6000), slice(6000, n)
    for mondrian in (True, False):
        rule = Conformal.fit(p[cal], y[cal], "lac", alpha, mondrian=mondrian)
        m = set_metrics(rule.sets(p[test]), y[test], names, resamples=400, level=0.99, seed=0)
        if mondrian:  # each class: inside the central 99% of what the guarantee gives for its image counts
            for k, c in enumerate(names):
                n_cal, n_test = int((y[cal] == k).sum()), int((y[test] == k).sum())
                rank = math.ceil((n_cal + 1) * (1 - alpha))  # coverage given the fit ~ Beta(rank, n_cal + 1 - rank)
                low, high = betabinom(n_test, rank, n_cal + 1 - rank).ppf([0.005, 0.995]) / n_test
                assert low <= m[f"test/per_class/{c}/conformal_coverage"] <= high, (c, low, high)
        else:  # one threshold for all: the rare hard class is well below the target
            assert m["test/per_class/rare/conformal_coverage_ci_high"] < 1 - alpha - 0.1


def test_set_metrics_and_the_curve_over_alpha():
    p, y = _probs(3000, 5, seed=4, sample=True)
    rule = Conformal.fit(p[:1000], y[:1000], "aps", 0.1, fitted_on="validation split")
    m = set_metrics(rule.sets(p[1000:]), y[1000:], list("vwxyz"), resamples=300, prefix="test/")
    for key in ["test/conformal_coverage", "test/conformal_set_size",
                *(f"test/per_class/{c}/conformal_coverage" for c in "vwxyz")]:
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"] and m[f"{key}_ci_low"] < m[f"{key}_ci_high"]
    assert 0 < m["test/conformal_coverage"] <= 1 and 1 <= m["test/conformal_set_size"] <= 5
    assert rule.describe().startswith("APS sets at 90% coverage, threshold ")
    assert rule.describe().endswith("fitted on validation split (1000 images)")
    assert rule.named_sets(p[:2], list("vwxyz"))[0][0] == "vwxyz"[int(p[0].argmax())]
    curve = coverage_curve(Conformal.fit(p[:1000], y[:1000], "lac", 0.1), p[1000:], y[1000:],
                           [0.3, 0.2, 0.1, 0.05, 0.0005])
    assert curve["alpha"] == [0.05, 0.1, 0.2, 0.3]  # 0.0005 needs 1999 images: left out
    assert all(abs(c - t) < 0.04 for c, t in zip(curve["coverage"], curve["target"]))
    assert curve["set_size"] == sorted(curve["set_size"], reverse=True)
    assert len(coverage_figure(curve).axes) == 2


@pytest.mark.parametrize("options", [dict(score="lac"), dict(score="aps", mondrian=True),
                                     dict(score="raps", randomized=True)])
def test_to_dict_survives_a_checkpoint(tmp_path, options):
    p, y = _probs(800, 4, seed=1)
    rule = Conformal.fit(p, y, alpha=0.1, fitted_on="validation split", **options)
    torch.save({"conformal": rule.to_dict()}, tmp_path / "c.ckpt")
    back = Conformal.from_dict(torch.load(tmp_path / "c.ckpt", weights_only=True)["conformal"])
    assert back == rule and (back.sets(p) == rule.sets(p)).all() and back.describe() == rule.describe()

    bare = Conformal.from_dict(json.loads(json.dumps(rule.to_dict(scores=False))))  # as ONNX metadata holds it
    assert bare.calibration_scores is None and (bare.sets(p) == rule.sets(p)).all()
    with pytest.raises(ConfigError, match="holds no calibration scores"):
        bare.at(0.2)


@pytest.mark.parametrize("options", [dict(score="lac"), dict(score="aps", mondrian=True),
                                     dict(score="raps", penalty=0.05, k_reg=1), dict(score="aps", randomized=True)])
def test_the_stored_scores_refit_the_rule_at_another_alpha(options):
    p, y = _probs(900, 4, seed=6)
    rule = Conformal.fit(p, y, alpha=0.1, **options)
    for alpha in (0.05, 0.2, 0.3):
        again = Conformal.fit(p, y, alpha=alpha, **options)
        assert rule.at(alpha) == again and (rule.at(alpha).sets(p) == again.sets(p)).all()
    with pytest.raises(ConfigError, match="need at least 999 calibration images"):
        rule.at(0.001)


def test_the_fewest_images_and_the_threshold_order_statistic():
    for alpha in (0.5, 0.2, 0.1, 0.05, 0.01, 0.3, 0.07):
        need = needed_images(alpha)
        assert math.ceil((need + 1) * (1 - alpha) - 1e-9) <= need  # the k-th of n exists ...
        assert need == 1 or math.ceil(need * (1 - alpha) - 1e-9) > need - 1  # ... and not with one image fewer
    scores = torch.arange(1.0, 21.0)[torch.randperm(20)]
    p = torch.stack([1 - scores / 100, scores / 100], 1)
    assert Conformal.fit(p, torch.zeros(20), "lac", 0.1).quantile == pytest.approx(0.19)  # 19th of 20


def test_mistakes_get_one_clear_message():
    p, y = _probs(200, 3, seed=0)
    for alpha in (0, 1, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"alpha .* must be in \(0, 1\)"):
            Conformal.fit(p, y, "lac", alpha)
    with pytest.raises(ConfigError, match="penalty and k_reg are settings of raps, not of aps"):
        Conformal.fit(p, y, "aps", penalty=0.1)
    with pytest.raises(ConfigError, match="score must be one of lac, aps, raps, got 'thr'"):
        Conformal.fit(p, y, "thr")
    with pytest.raises(ConfigError, match="need at least 19 calibration images, but the calibration split has 12"):
        Conformal.fit(p[:12], y[:12], "aps", 0.05)
    y_rare = y.clone()
    y_rare[y_rare == 2] = 0
    y_rare[:3] = 2
    with pytest.raises(ConfigError, match="of each class for mondrian sets.*class 2: 3"):
        Conformal.fit(p, y_rare, "lac", 0.1, mondrian=True)
    state = Conformal.fit(p, y, "lac").to_dict()
    with pytest.raises(CheckpointError, match="names the score 'thr', which is not one of lac, aps, raps; fit"):
        Conformal.from_dict({**state, "score": "thr"})
    with pytest.raises(CheckpointError, match=r"has keys \['extra'\] that this version does not know; fit"):
        Conformal.from_dict({**state, "extra": 1})
    with pytest.raises(CheckpointError, match="cannot be read"):
        Conformal.from_dict({**state, "quantile": [0.5, 0.6, 0.7]})
    with pytest.raises(CheckpointError, match="thresholds for 3 classes but the model has 4"):
        Conformal.fit(p, y, "lac", mondrian=True).sets(torch.rand(5, 4))


def test_the_config_key_randomizes_the_fitted_sets():
    from medimg.config.evaluation import ConformalSettings
    from medimg.evaluation.validation_fit import fit_conformal

    probs = torch.tensor([[0.7, 0.2, 0.1]] * 30 + [[0.2, 0.7, 0.1]] * 30)
    targets = torch.tensor([0, 1, 2] * 20)
    rule = fit_conformal(ConformalSettings(alpha=0.2, score="aps", mondrian=False, randomized=True), probs, targets)
    assert rule is not None and rule.randomized and rule.score == "aps"
    with pytest.raises(ConfigError, match="lac sets are not randomised"):
        ConformalSettings(alpha=0.1, score="lac", mondrian=False, randomized=True).check("evaluation.conformal")
