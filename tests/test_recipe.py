"""The recipe for small and large data sets: the convex head, step budgets, warmup, discriminative rates, the
learning-rate finder, the regularisers (mixup/cutmix, focal loss, EMA, balanced sampling) and their errors."""

from __future__ import annotations

import math
from dataclasses import replace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from medimg.config.training import EarlyStoppingSettings
from medimg.errors import ConfigError
from medimg.models.losses import classification_loss
from medimg.models.optim import warmup_cosine
from medimg.train import train
from medimg.training.budget import phase_budget
from medimg.training.head_solver import solve_head
from medimg.training.phase_book import PhaseBook
from medimg.training.trainer import early_stopping
from tests.conftest import TINY, compose_train, make_classifier, settings_of


def _features(n: int, d: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g)
    y = torch.multinomial(torch.tensor([0.6, 0.3, 0.1][:c]), n, replacement=True, generator=g)
    return centres[y] + 1.5 * torch.randn(n, d, generator=g), y


def test_convex_head_equals_scikit_learn_with_class_weights():
    x, y = _features(400, 16, 3, 0)
    vx, vy = _features(200, 16, 3, 1)
    weight = torch.tensor([0.5, 1.0, 3.0])
    sol = solve_head(x, y, vx, vy, 3, weight, [1e-2], max_iter=500)
    sample_weight = weight[y].numpy()
    ref = LogisticRegression(C=1.0 / (1e-2 * sample_weight.sum()), tol=1e-10, max_iter=10000)
    ref.fit(x.double().numpy(), y.numpy(), sample_weight=sample_weight)  # float64, as medimg solves it
    ours = torch.softmax(vx.double() @ sol.weight.T + sol.bias, -1).numpy()
    # the same optimum: probabilities agree to 1e-5 (the two L-BFGS runs stop at slightly different points)
    np.testing.assert_allclose(ours, ref.predict_proba(vx.double().numpy()), atol=1e-5)


def test_convex_head_picks_the_l2_strength_with_the_lowest_validation_loss():
    x, y = _features(60, 64, 3, 2)  # few images, many features: a weak penalty overfits
    vx, vy = _features(300, 64, 3, 3)
    sol = solve_head(x, y, vx, vy, 3, None, [1e-4, 1e-2, 1.0], max_iter=300)
    assert sol.l2 == min(sol.val_losses, key=sol.val_losses.get) and len(sol.val_losses) == 3
    assert sol.val_losses[1e-4] > min(sol.val_losses.values())


def test_steps_raise_epochs_and_patience_on_small_sets_only(tmp_path):
    s = settings_of(compose_train(tmp_path, tmp_path / "data", []))
    ph = s.stage.phases["finetune"]  # 10 epochs, patience 2, min_steps 300, patience_min_steps 100
    small = phase_budget(ph, n_train=80, batch_size=64, trainer=s.trainer, world=1)  # 2 steps an epoch
    assert (small.epochs, small.patience, small.total_steps) == (150, 50, 300)
    ham = phase_budget(ph, n_train=7000, batch_size=64, trainer=s.trainer, world=1)  # 110 steps an epoch
    assert (ham.epochs, ham.patience, ham.total_steps) == (10, 2, 1100)
    two_gpus = phase_budget(ph, n_train=7000, batch_size=64, trainer=s.trainer, world=2)
    assert two_gpus.steps_per_epoch == 55 and two_gpus.epochs == 10
    assert "raised to reach min_steps=300" in small.describe(ph) and "patience 2 -> 50" in small.describe(ph)
    # trainer.val_min_steps=20: the 2-step epochs are validated every 10 epochs, patience counted in validations
    assert (small.val_every, small.patience_checks, ham.val_every, ham.patience_checks) == (10, 5, 1, 2)
    assert "validated every 10 epochs (20 steps" in small.describe(ph) and "= 5 validations" in small.describe(ph)
    odd = phase_budget(ph, n_train=64 * 3, batch_size=64, trainer=s.trainer, world=1)  # 3 steps an epoch
    assert (odd.val_every, odd.epochs) == (7, 105)  # 100 epochs for min_steps, rounded up to whole periods
    no_floor = replace(ph, min_steps=0)
    rounded = phase_budget(no_floor, n_train=64 * 3, batch_size=64, trainer=s.trainer, world=1)
    assert rounded.epochs == 14 and "epochs 10 -> 14, rounded up to whole validation periods of 7 epochs" in \
        rounded.describe(no_floor)
    every_epoch = replace(s.trainer, val_min_steps=0)
    assert phase_budget(ph, n_train=80, batch_size=64, trainer=every_epoch, world=1).val_every == 1


def test_the_phase_log_says_when_trainer_max_epochs_lowered_the_epochs(tmp_path):
    s = settings_of(compose_train(tmp_path, tmp_path / "data", ["trainer.max_epochs=3"]))
    ph = s.stage.phases["finetune"]  # 10 epochs
    big = phase_budget(ph, n_train=7000, batch_size=64, trainer=s.trainer, world=1)
    assert big.epochs == 3
    line = big.describe(ph)
    assert "epochs 10 -> 3, lowered by trainer.max_epochs" in line and "raised" not in line


class _ScriptedScores(L.LightningModule):
    """Logs a given validation score per epoch (training does nothing that matters)."""

    def __init__(self, scores: list[float]):
        super().__init__()
        self.scores, self.w = scores, torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, _):
        return (self.w * batch[0]).sum()

    def validation_step(self, batch, _):
        self.log("val/auroc", self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 1)), batch_size=2)

    val_dataloader = train_dataloader


@pytest.mark.parametrize("from_start, epochs_run", [(True, 2), (False, 4)])
def test_a_phase_must_beat_the_score_it_started_from_within_its_patience(from_start, epochs_run):
    """The head validated at 0.95; fine-tune epochs reach 0.90, 0.93, 0.92, 0.91, 0.96: counted from the start
    score, the phase ends after its 2 epochs of patience; counted from its own first epoch, it runs 4."""
    es = EarlyStoppingSettings(enabled=True, min_delta=0.0, from_start=from_start)
    stop = early_stopping(es, "val/auroc", "max", patience=2, start_score=0.95)
    trainer = L.Trainer(max_epochs=5, callbacks=[stop], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_ScriptedScores([0.90, 0.93, 0.92, 0.91, 0.96]))
    assert trainer.current_epoch == epochs_run


def test_the_best_of_tied_phases_is_the_earlier_one():
    book = PhaseBook(["a", "b"], {})
    book.finish("head", "head-best.ckpt", 1.0)
    book.finish("finetune", "finetune-best.ckpt", 1.0)
    assert book.best("max") == ("head-best.ckpt", 1.0)
    book.finish("more", "more-best.ckpt", 0.5)
    assert book.best("min") == ("more-best.ckpt", 0.5)


def test_warmup_then_cosine():
    factors = [warmup_cosine(step, warmup=4, total=20, cosine=True) for step in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and factors[4] == 1.0
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and factors[-1] == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert warmup_cosine(30, warmup=4, total=20, cosine=False) == 1.0


def test_discriminative_rates_per_block():
    model = make_classifier(["a", "b", "c"])
    model.set_phase("finetune", ["layer3", "layer4"], 1e-3, 1, 10, 0, 0.5)
    groups = {g["name"]: g for g in model.parameter_groups()}
    assert groups["head"]["lr"] == 1e-3 and groups["layer4"]["lr"] == 5e-4 and groups["layer3"]["lr"] == 2.5e-4
    opt = model.configure_optimizers()["optimizer"]
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.trainable_parameters())


def test_soft_targets_with_class_weights_reduce_to_weighted_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(12, 4, generator=g), torch.randint(0, 4, (12,), generator=g)
    w = torch.tensor([1.0, 2.0, 0.5, 4.0])
    ref = F.cross_entropy(logits, y, weight=w)
    assert classification_loss(logits, F.one_hot(y, 4).float(), w, 0.0, 0.0) == pytest.approx(float(ref), rel=1e-5)
    focal = classification_loss(logits, y, w, 0.0, 2.0)
    assert 0 < float(focal) < float(ref)  # focal weighting shrinks the loss of the easy images


@pytest.mark.parametrize("override,says", [
    ("model.focal_gamma=-1", "model.focal_gamma: must be >= 0"),
    ("stage.phases.head.lr=find", "lr=find needs a phase trained on images"),
    ("stage.phases.finetune.warmup_steps=10", "warmup needs optim.scheduler=cosine or none"),
    ("dataset.sampling=balanced", "would correct the class imbalance twice"),
])
def test_bad_recipe_settings_are_refused_before_data_work(override, says, tmp_path):
    extra = ["optim.scheduler=step"] if "warmup" in override else []
    cfg = compose_train(tmp_path / "run", tmp_path / "data", [*TINY, override, *extra])
    with pytest.raises(ConfigError, match=says):
        train(cfg)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_every_regulariser_runs_in_a_short_fit(tmp_path, data_dir):
    options = [
        ["model.mixup_alpha=0.2", "model.cutmix_alpha=1.0"], ["model.focal_gamma=2"], ["model.ema_decay=0.9"],
        ["dataset.sampling=balanced", "dataset.class_weights=false"],
        ["stage.phases.finetune.warmup_steps=3", "stage.phases.finetune.lr_decay=0.5",
         "stage.phases.finetune.train_blocks=[layer3,layer4]"],
    ]
    for i, extra in enumerate(options):
        metrics = train(compose_train(tmp_path / f"r{i}", data_dir, [*TINY, "evaluation.gallery_per_class=0",
                                                                     "evaluation.bootstrap_resamples=0", *extra]))
        assert 0 <= metrics["test/auroc"] <= 1 and math.isfinite(metrics["test/loss"]), extra


@pytest.mark.slow
def test_mixup_on_a_binary_task_is_refused(tmp_path):
    from PIL import Image

    root = tmp_path / "pneumonia"
    for k, cls in enumerate(("NORMAL", "PNEUMONIA")):
        (root / cls).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(np.full((16, 16, 3), 40 * k + i, np.uint8)).save(root / cls / f"{i}.png")
    cfg = compose_train(tmp_path / "run", tmp_path / "data", [
        *[a for a in TINY if "num_images" not in a], "dataset=folder", f"dataset.root={root}",
        "model.mixup_alpha=0.2"])
    with pytest.raises(ConfigError, match="multiclass tasks"):
        train(cfg)


@pytest.mark.slow
def test_lr_finder_writes_its_curve_and_trains_at_the_suggestion(tiny_cfg, tmp_path, caplog):
    import logging

    cfg = tiny_cfg("stage=finetune", "stage.phases.finetune.lr=find", "dataset.num_images=320",
                   "evaluation.gallery_per_class=0")
    with caplog.at_level(logging.INFO, logger="medimg.train"):
        train(cfg)
    assert (tmp_path / "run" / "figures" / "lr_find_finetune.png").stat().st_size > 5000
    found = [r.getMessage() for r in caplog.records if "learning-rate finder suggests" in r.getMessage()]
    assert len(found) == 1
    lr = float(found[0].split("lr ")[1].split()[0])
    state = torch.load(tmp_path / "run" / "checkpoints" / "finetune-best.ckpt", weights_only=True)["medimg"]
    assert state["phase"]["lr"] == pytest.approx(lr, rel=1e-5) and 1e-7 <= lr <= 1.0


@pytest.mark.slow
def test_gradual_stage_unfreezes_one_more_block_per_phase(tiny_cfg, tmp_path):
    train(tiny_cfg("stage=gradual", "trainer.max_epochs=1", "test=false", "callbacks.early_stopping.enabled=false"))
    ckpts = tmp_path / "run" / "checkpoints"

    def net(phase):
        sd = torch.load(ckpts / f"{phase}-best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        return {k.removeprefix("net."): v for k, v in sd.items() if k.startswith("net.")}

    def changed(a, b, block):
        keys = [k for k in a if k.startswith(block + ".") and not k.endswith("num_batches_tracked")]
        return any(not torch.equal(a[k], b[k]) for k in keys)

    states = [net(p) for p in ("head", "last1", "last2", "last3")]
    order = ["layer4", "layer3", "layer2"]  # the last blocks of a ResNet, from the head back
    for k in range(1, 4):
        before, after = states[k - 1], states[k]
        for j, block in enumerate(order):
            assert changed(before, after, block) == (j < k), (k, block)
        for block in ("conv1", "bn1", "layer1"):
            assert not changed(before, after, block), (k, block)
