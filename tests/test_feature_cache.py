"""Feature-cached head phase: features equal the frozen backbone's, the head trains on them, and the model it
produces scores on images exactly as it scored on the cached features."""

from __future__ import annotations

import json

import pytest
import torch

from medimg.models.backbones import head_removed
from medimg.train import train
from medimg.training.features import extract_features
from tests.conftest import datamodule_of, make_classifier


@pytest.fixture
def tiny_dm(tiny_cfg):
    return datamodule_of(tiny_cfg())


def test_extracted_features_are_the_backbone_output_in_eval_mode(tiny_dm):
    torch.manual_seed(0)
    model = make_classifier(tiny_dm.class_names, channels_last=True)
    model.set_phase("head", [], 1e-3, 1)
    model.train()
    cached = extract_features(model, tiny_dm.once_loader(tiny_dm.unaugmented_dataset("val")))
    feats, targets, index = cached.features, cached.targets, cached.rows
    assert model.training and model.net.layer1.training is False  # mode restored (frozen blocks stay eval)
    assert isinstance(model.net.fc, torch.nn.Sequential)  # the head is back

    table = tiny_dm.split_table("val")
    assert feats.shape == (len(table), 512) and feats.dtype == torch.float32
    assert torch.equal(index, torch.arange(len(table)))
    assert targets.tolist() == [tiny_dm.class_names.index(lb) for lb in table["label"]]
    x = torch.stack([tiny_dm.datasets["val"][i][0] for i in range(4)])  # val: the eval transform too
    model.eval()
    with torch.no_grad(), head_removed(model.net, "resnet18"):
        ref = model.net(x)
    assert torch.allclose(feats[:4], ref, atol=1e-5)
    with torch.no_grad():  # the head on the features gives the model's logits on the images
        assert torch.allclose(model._logits(feats[:4]), model(x), atol=1e-4)


def test_the_device_path_prepares_the_images_as_the_eval_transform_does(tiny_cfg, caplog):
    """dataset.batch_augment: the feature pass reads cached uint8 batches and crops, resamples and normalises
    them on the device; the inputs match the eval transform's (up to its antialiasing) and so do the features."""
    import logging

    from medimg.data.batch_augment import augment_batch
    from medimg.training.features import split_features

    dm = datamodule_of(tiny_cfg("dataset.eval_resize=1.25", "dataset.cache_size=1.3"), setup=False)
    dm.augment_whole_batches = True  # dataset.batch_augment as a GPU run resolves it
    dm.prepare_data()
    dm.setup("fit")
    assert dm.batch_augment and abs(dm.eval_spec.crop_fraction - 0.8) < 1e-9
    batch = next(iter(dm.once_batches("val")))
    device_x = augment_batch(batch.images, batch.params, dm.eval_spec)
    cpu_x = torch.stack([dm.datasets["val"][i][0] for i in range(len(device_x))])
    assert device_x.shape == cpu_x.shape and torch.equal(batch.rows, torch.arange(len(device_x)))
    per_image = (device_x - cpu_x).abs().mean(dim=(1, 2, 3))
    assert per_image.max() < 0.02, per_image  # measured 0.006 (normalised units)
    torch.manual_seed(0)
    model = make_classifier(dm.class_names)
    model.set_phase("head", [], 1e-3, 1)
    with caplog.at_level(logging.INFO, logger="medimg"):
        feats, _ = split_features(model, dm, "val")
    reference = extract_features(model, dm.once_loader(dm.unaugmented_dataset("val")))
    assert torch.equal(feats.rows, reference.rows) and torch.equal(feats.targets, reference.targets)
    assert (feats.features - reference.features).abs().mean() < 0.02 * reference.features.abs().mean()  # 0.6%
    assert "waiting for batches" in caplog.text and "forward" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("head_fit", ["epochs", "convex"])
def test_feature_cached_head_phase_trains_the_head_only_and_scores_like_images(head_fit, tiny_cfg, tmp_path):
    cfg = tiny_cfg("stage=head", "stage.phases.head.feature_cache=true", f"stage.phases.head.head_fit={head_fit}",
                   "trainer.max_epochs=3", "trainer.precision=32", "callbacks.early_stopping.enabled=false",
                   "callbacks.throughput=true", "test=false")
    train(cfg)
    run = tmp_path / "run"
    ck = torch.load(run / "checkpoints" / "head-best.ckpt", map_location="cpu", weights_only=True)
    trained = {k.removeprefix("net."): v for k, v in ck["state_dict"].items() if k.startswith("net.")}
    torch.manual_seed(cfg.seed)  # as train() seeds before it builds the model: the initial weights
    initial = make_classifier(["a", "b", "c", "d"]).net.state_dict()
    for k, v in initial.items():
        if k.startswith("fc."):
            assert not torch.equal(v, trained[k]), f"head weight {k} did not train"
        else:
            assert torch.equal(v, trained[k]), f"backbone tensor {k} changed in a feature-cached head phase"

    # the best score logged on cached val features equals the best model's score on the val images
    dm = datamodule_of(cfg)
    model = make_classifier(dm.class_names)
    model.load_state_dict(ck["state_dict"])
    model.eval()
    with torch.no_grad():
        for x, y, _ in dm.val_dataloader():
            model.val_metrics.update(model(x).softmax(-1), y)
    on_images = float(model.val_metrics.compute()["val/auroc"])
    state = json.loads((run / "history.json").read_text())["epochs"]
    if head_fit == "convex":  # solved, not trained by epochs: one record, the score of the solution
        assert len(state) == 1 and state[0]["l2"] in cfg.optim.probe_l2
        assert on_images == pytest.approx(state[0]["val/auroc"], abs=1e-6)
        return
    best = next(iter(v for k, v in ck["callbacks"].items() if k.startswith("ModelCheckpoint")))["best_model_score"]
    assert on_images == pytest.approx(float(best), abs=1e-6)

    timing = json.loads((run / "throughput.json").read_text())["head"]
    assert timing["epochs"] == 3 and timing["images_trained"] == 3 * len(dm.split_table("train"))
    assert set(timing["feature_extract_s"]) == {"train", "val"}
    assert timing["images_per_s_fit"] > 0


def test_feature_cache_on_a_trained_block_is_refused(tiny_cfg):
    cfg = tiny_cfg("stage=finetune", "stage.phases.finetune.feature_cache=true")
    with pytest.raises(ValueError, match=r"stage.phases.finetune.feature_cache=true needs a frozen backbone"):
        train(cfg)
