"""The toolbox wired into params and the training loop: every setting is read
strictly, reaches fit(), and changes what training does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tasks.core.params import load_params
from tasks.core.errors import DistilleryError
from tasks.export import artifact_metadata, export_candidate
from tasks.ml.models import save_model
from tasks.onnx.export import run_batches, session
from tasks.ml.regularization import _unit_norms
from tasks.train import start_from, train_teacher
from tasks.evaluation.metrics import class_logits
from tasks.ml.training import class_weights, n_outputs, predict_logits, task_loss

from conftest import REPO_ROOT, params_section

META = {"input_shape": [1, 8, 8], "classes": ["a", "b", "c"], "mean": [8.0], "std": [4.0], "data_hash": "h",
        "pixel_max": 16.0}


def toy(n: int = 60, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (rng.uniform(0, 8, (n, 1, 8, 8)) + 4 * y[:, None, None, None]).astype(np.float32)
    return x, y


def train_params(**overrides):
    base = dict(channels=(3,), hidden=6, max_epochs=3, patience=3, batch_size=16, class_weighting="none")
    return params_section("train", **{**base, **overrides})


# --------------------------------------------------------------------------- params


def write_params(tmp_path: Path, **section_overrides) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for dotted, value in section_overrides.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train__loss": "hinge"}, r"'train'.*unknown loss 'hinge'"),
        ({"train__loss": "focal", "train__loss_options": {"gamma": -1.0}}, r"'train'.*gamma"),
        ({"train__loss": "focal", "train__loss_options": {"beta": 1.0}}, r"'train'.*'beta' is not an option"),
        ({"train__optimizer": "adamax"}, r"'train'.*adamax"),
        ({"train__optimizer": "momentum", "train__optimizer_options": {"momentum": 1.5}}, r"'train'.*momentum"),
        ({"train__schedule": "warp"}, r"'train'.*warp"),
        ({"train__schedule": "custom"}, r"'train'.*table"),
        ({"distill__constraint": "max_norm", "distill__constraint_options": {"max_value": -1}}, r"'distill'.*max_value"),
        ({"train__loss": "mse"}, r"train\.loss.*does not fit a multiclass task"),
        ({"train__clip": "sometimes"}, r"'train\.clip'"),
        ({"task__type": "clustering"}, r"'task\.type'"),
    ],
)
def test_bad_toolbox_settings_fail_when_params_are_read(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(DistilleryError, match=message) as err:
        load_params(write_params(tmp_path, **overrides))
    assert "params.yaml" in str(err.value)


# --------------------------------------------------------------------------- the loop


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": "sgd"},
        {"optimizer": "momentum", "optimizer_options": {"momentum": 0.9, "nesterov": True}},
        {"optimizer": "adagrad"},
        {"optimizer": "rmsprop"},
        {"optimizer": "adamw", "optimizer_options": {"weight_decay": 0.01}},
        {"schedule": "step", "schedule_options": {"step_size": 1, "gamma": 0.5}},
        {"schedule": "exponential", "schedule_options": {"gamma": 0.9}},
        {"schedule": "cosine"},
        {"schedule": "custom", "schedule_options": {"table": {0: 1.0, 2: 0.1}}},
        {"schedule": "plateau", "schedule_options": {"patience": 0}},
        {"clip": "norm", "clip_value": 0.5},
        {"clip": "value", "clip_value": 0.01},
        {"l1": 1e-4, "l2": 1e-3, "penalty_target": "both"},
        {"activity_l1": 1e-4, "activity_l2": 1e-4},
        {"loss": "focal", "loss_options": {"gamma": 2.0}},
        {"loss": "ce", "loss_options": {"label_smoothing": 0.1}},
        {"batch_norm": False},
        {"stopping": "correlation", "correlation_window": 3, "max_epochs": 6},
    ],
)
def test_every_setting_trains_and_stays_deterministic(overrides: dict) -> None:
    params = train_params(**overrides)
    first, result = train_teacher(toy(), toy(30, seed=1), META, params, quiet=True)
    again, _ = train_teacher(toy(), toy(30, seed=1), META, params, quiet=True)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    assert 1 <= result.epochs_run <= params.max_epochs
    assert all(np.isfinite(row["train_loss"]) for row in result.history)


def test_schedule_changes_the_learning_rate_each_epoch() -> None:
    params = train_params(schedule="step", schedule_options={"step_size": 1, "gamma": 0.5}, max_epochs=3, patience=5)
    _, result = train_teacher(toy(), toy(30, seed=1), META, params, quiet=True)
    # The logged lr is the one each epoch trained with: the base, then halved after every epoch.
    assert [row["lr"] for row in result.history] == pytest.approx([params.lr * 0.5**k for k in range(3)])


def test_max_norm_constraint_holds_after_training() -> None:
    params = train_params(constraint="max_norm", constraint_options={"max_value": 0.3}, lr=0.05)
    model, _ = train_teacher(toy(), toy(30, seed=1), META, params, quiet=True)
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            assert float(_unit_norms(module.weight).max()) <= 0.3 + 1e-5


def test_correlation_stopping_ends_an_overfitting_run_before_patience_would() -> None:
    # Tiny train set, big model, high lr: train loss falls, val loss does not follow.
    x, y = toy(24, seed=2)
    xv, yv = toy(60, seed=3)
    common = dict(channels=(16,), hidden=64, dropout=0.0, lr=0.01, max_epochs=40, min_delta=0.0)
    patience = train_teacher((x, y), (xv, yv), META, train_params(**common, stopping="patience", patience=15), quiet=True)[1]
    correlation = train_teacher((x, y), (xv, yv), META, train_params(**common, stopping="correlation", patience=1,
                                                                     correlation_window=4, correlation_threshold=0.5),
                                quiet=True)[1]
    assert correlation.epochs_run < patience.epochs_run
    assert correlation.best_val_loss == pytest.approx(min(r["val_loss"] for r in correlation.history))


def test_class_weight_schemes() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    balanced = class_weights(labels, 2, "balanced")
    assert balanced.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])
    assert class_weights(labels, 2, "sqrt_inverse").tolist() == pytest.approx(np.sqrt(balanced.numpy()).tolist())
    assert class_weights(labels, 2, "none") is None


# --------------------------------------------------------------------------- binary head


def test_binary_bce_has_one_logit_and_exports_two_probabilities(tmp_path: Path) -> None:
    meta = {**META, "classes": ["neg", "pos"]}
    params = train_params(loss="auto", class_weighting="balanced", max_epochs=4)
    assert n_outputs("binary", params, 2) == 1 and n_outputs("multiclass", params, 2) == 2
    train, val = toy(80, classes=2), toy(40, classes=2, seed=1)
    model, _ = train_teacher(train, val, meta, params, quiet=True, task="binary")
    assert model.spec.n_classes == 1
    logits = predict_logits(model, val[0])
    assert logits.shape == (40, 1)
    export = params_section("export", temperature_scaling=False, calibration_samples=16)
    export_candidate("bin", model, val, train[0][:16], artifact_metadata(meta), export, tmp_path)
    probabilities = run_batches(session(tmp_path / "bin.fp32.onnx"), val[0])
    expected = 1 / (1 + np.exp(-logits[:, 0]))
    np.testing.assert_allclose(probabilities[:, 1], expected, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_binary_bce_weighs_positives_by_the_class_ratio() -> None:
    weights = class_weights(np.array([0] * 30 + [1] * 10), 2, "balanced")
    loss = task_loss("binary", train_params(), weights)
    logits, y = torch.zeros(4, 1), torch.tensor([1, 1, 0, 0])
    # BCE at logit 0 is log 2 per sample; positives count 3x (30/10).
    assert loss(logits, y).item() == pytest.approx((2 * 3 * np.log(2) + 2 * np.log(2)) / 4)


def test_class_logits_turns_one_logit_into_two_columns() -> None:
    z = np.array([[2.0], [-1.0]])
    assert class_logits(z).tolist() == [[0.0, 2.0], [0.0, -1.0]]
    assert class_logits(np.ones((2, 3))).shape == (2, 3)


# --------------------------------------------------------------------------- transfer learning


def test_start_from_copies_matching_weights_and_keeps_a_new_head(tmp_path: Path) -> None:
    source, _ = train_teacher(toy(), toy(30, seed=1), META, train_params(), quiet=True)
    save_model(source, tmp_path / "base")
    four = {**META, "classes": ["a", "b", "c", "d"]}
    params = train_params(init_from=str(tmp_path / "base"), freeze=("features",), unfreeze_after=0, max_epochs=2)
    model, _ = train_teacher(toy(classes=4), toy(30, classes=4, seed=1), four, params, quiet=True)
    for name, value in source.state_dict().items():
        if name.startswith("features") and "num_batches" not in name and "running" not in name:
            assert torch.equal(value, model.state_dict()[name]), name  # frozen: unchanged
    assert model.state_dict()["head.5.weight"].shape == (4, 6)  # the new head for four classes


def test_unfreeze_after_lets_frozen_layers_train(tmp_path: Path) -> None:
    source, _ = train_teacher(toy(), toy(30, seed=1), META, train_params(), quiet=True)
    save_model(source, tmp_path / "base")
    params = train_params(init_from=str(tmp_path / "base"), freeze=("features",), unfreeze_after=1, max_epochs=3,
                          patience=5)
    model, _ = train_teacher(toy(), toy(30, seed=1), META, params, quiet=True)
    conv = "features.1.weight"
    assert not torch.equal(source.state_dict()[conv], model.state_dict()[conv])


def test_start_from_refuses_an_unrelated_checkpoint(tmp_path: Path) -> None:
    other = {**META, "input_shape": [1, 8, 8]}
    source, _ = train_teacher(toy(), toy(30, seed=1), other, train_params(channels=(5,), hidden=7), quiet=True)
    save_model(source, tmp_path / "other")
    model, _ = train_teacher(toy(), toy(30, seed=1), META, train_params(channels=(3,), hidden=6, max_epochs=1),
                             quiet=True)
    missing = start_from(model, str(tmp_path / "other"))
    assert "features.1.weight" in missing  # conv widths differ: not copied


def test_a_student_larger_than_its_teacher_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DistilleryError, match=r"student .* must not be larger than the teacher"):
        load_params(write_params(tmp_path, distill__channels=[64, 128]))
