"""The built-in synthetic data set: deterministic, imbalanced, masks where the class evidence is."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from medimg.data.synthetic import CLASSES, PROPORTIONS, class_counts, generate, mask_path, render


def _digest(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*.png")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_laid_out(tmp_path):
    a = generate(tmp_path / "a", num_images=40, img_size=32, seed=3)
    b = generate(tmp_path / "b", num_images=40, img_size=32, seed=3)
    c = generate(tmp_path / "c", num_images=40, img_size=32, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)
    images = sorted((a / "images").rglob("*.png"))
    assert len(images) == 40
    assert {p.parent.name for p in images} == set(CLASSES)
    for p in images[:5]:
        m = np.asarray(Image.open(mask_path(p)))
        assert m.shape == (32, 32) and set(np.unique(m)) <= {0, 255} and (m > 0).any()
        assert Image.open(p).mode == "RGB"


def test_regeneration_is_a_no_op_and_mismatch_is_refused(tmp_path):
    root = generate(tmp_path / "s", num_images=20, img_size=16, seed=0)
    before = (root / "manifest.json").stat().st_mtime_ns
    generate(root, num_images=20, img_size=16, seed=0)
    assert (root / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="other parameters"):
        generate(root, num_images=30, img_size=16, seed=0)


def test_imbalanced_like_ham10000():
    counts = class_counts(3000)
    assert sum(counts) == 3000
    assert counts[0] / 3000 == pytest.approx(PROPORTIONS[0], abs=0.01)
    assert counts[0] > 5 * counts[-1]


def test_class_is_not_in_the_background():
    """A classifier on the colour outside the lesion is near chance: the model must look at the lesion."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    rng = np.random.default_rng(0)
    feats, feats_lesion, labels = [], [], []
    for k, cls in enumerate(CLASSES):
        for _ in range(80):
            img, mask = render(rng, cls, 48)
            bg = img[~mask].astype(float)
            feats.append(np.concatenate([bg.mean(0), bg.std(0)]))
            fg = img[mask].astype(float)
            feats_lesion.append(np.concatenate([fg.mean(0), fg.std(0)]))
            labels.append(k)
    clf = LogisticRegression(max_iter=2000)
    background = cross_val_score(clf, np.array(feats), labels, cv=4, scoring="balanced_accuracy").mean()
    lesion = cross_val_score(clf, np.array(feats_lesion), labels, cv=4, scoring="balanced_accuracy").mean()
    assert background < 0.40, background       # chance is 0.25
    assert lesion > background + 0.3, (lesion, background)


def _generate_small(root):
    generate(root, num_images=400, img_size=24, seed=1)


def test_concurrent_generation_by_two_processes(tmp_path):
    """Ranks started together (torchrun) may generate the same set at once: both succeed, one set results."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_generate_small, args=(tmp_path / "s",)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(list((tmp_path / "s" / "images").rglob("*.png"))) == 400
    assert [p.name for p in tmp_path.iterdir()] == ["s"], "a temporary folder was left behind"
