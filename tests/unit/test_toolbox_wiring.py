"""The toolbox wired into params and the training loop: every setting is read
strictly (tasks/core/params.py, then tasks/ml/checks.py), reaches fit(), and
changes what training does; every loss either is refused for a task or trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO_ROOT, image_meta, params_section

from tasks.contracts.onnx import PROBABILITIES
from tasks.contracts.processed import ProcessedMeta
from tasks.core.errors import DistilleryError
from tasks.core.params import load_params
from tasks.data.encoding import fit_encoder
from tasks.data.sources import DIGIT_ATTRIBUTE_MATRIX, DIGIT_ATTRIBUTES
from tasks.evaluation.metrics import class_logits
from tasks.export import artifact_metadata, export_candidate
from tasks.ml.checks import NOT_WIRED, SIGMOID_TASKS, UNWEIGHTED_LOSSES, check_fit_params, check_training_params
from tasks.ml.distillation import distill_student
from tasks.ml.fitting import start_from, train_teacher
from tasks.ml.losses import LOSS_TASKS, TASK_TYPES
from tasks.ml.models import build_model, predict_logits, save_model, spec_for
from tasks.ml.regularization import _unit_norms
from tasks.ml.training import class_weights, n_outputs, task_loss
from tasks.onnx.runtime import run_batches, session

META = image_meta(data_hash="h")


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
    ("overrides", "key", "message"),
    [
        ({"train__loss": "hinge"}, "train.loss", r"unknown loss 'hinge'"),
        ({"train__loss": "focal", "train__loss_options": {"gamma": -1.0}}, "train.loss_options.gamma", r"gamma"),
        ({"train__loss": "focal", "train__loss_options": {"beta": 1.0}}, "train.loss_options.beta", r"not an option"),
        ({"train__loss": "ce", "train__loss_options": {"gamma": 2.0}}, "train.loss_options.gamma", r"not an option"),
        ({"train__optimizer": "adamax"}, "train.optimizer", r"adamax"),
        (
            {"train__optimizer": "momentum", "train__optimizer_options": {"momentum": 1.5}},
            "train.optimizer_options.momentum",
            r"momentum",
        ),
        ({"train__schedule": "warp"}, "train.schedule", r"warp"),
        ({"train__schedule": "custom"}, "train.schedule_options", r"table"),
        (
            {"distill__constraint": "max_norm", "distill__constraint_options": {"max_value": -1}},
            "distill.constraint_options.max_value",
            r"max_value",
        ),
        ({"train__loss": "mse"}, "train.loss", r"does not fit a multiclass task"),
        ({"train__loss": "kl_div", "train__class_weighting": "balanced"}, "train.class_weighting", r"no class weights"),
        (
            {"distill__loss": "ce", "distill__loss_options": {"label_smoothing": 1.0}},
            "distill.loss_options.label_smoothing",
            r"label_smoothing",
        ),
    ],
)
def test_bad_toolbox_settings_are_refused_by_the_training_checks(
    tmp_path: Path, overrides: dict, key: str, message: str
) -> None:
    # load_params checks types and ranges without torch; the ML options are the training checks' (tasks/ml/checks.py).
    path = write_params(tmp_path, **overrides)
    params = load_params(path)
    with pytest.raises(DistilleryError, match=message) as err:
        check_training_params(params, params.task.type, str(path))
    assert str(err.value).startswith(f"{path}: '{key}': ")
    assert "params.yaml" in str(err.value)
    section = key.split(".")[0]
    with pytest.raises(DistilleryError, match=message) as err:
        check_fit_params(getattr(params, section), section, params.task.type)
    assert str(err.value).startswith(f"params.yaml: '{key}': ")


def test_the_repo_training_settings_pass_the_training_checks() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    check_training_params(params, params.task.type)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train__clip": "sometimes"}, r"'train\.clip'"),
        ({"task__type": "clustering"}, r"'task\.type'"),
    ],
)
def test_bad_settings_fail_when_params_are_read(tmp_path: Path, overrides: dict, message: str) -> None:
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
            assert float(_unit_norms(module.weight.detach()).max()) <= 0.3 + 1e-5


def test_correlation_stopping_ends_an_overfitting_run_before_patience_would() -> None:
    # Tiny train set, big model, high lr: train loss falls, val loss does not follow.
    x, y = toy(24, seed=2)
    xv, yv = toy(60, seed=3)
    common = dict(channels=(16,), hidden=64, dropout=0.0, lr=0.01, max_epochs=40, min_delta=0.0)
    patience = train_teacher(
        (x, y), (xv, yv), META, train_params(**common, stopping="patience", patience=15), quiet=True
    )[1]
    correlation = train_teacher(
        (x, y),
        (xv, yv),
        META,
        train_params(**common, stopping="correlation", patience=1, correlation_window=4, correlation_threshold=0.5),
        quiet=True,
    )[1]
    assert correlation.epochs_run < patience.epochs_run
    assert correlation.best_val_loss == pytest.approx(min(r["val_loss"] for r in correlation.history))


def test_class_weight_schemes() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    balanced = class_weights(labels, 2, "balanced")
    assert balanced.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])
    assert class_weights(labels, 2, "sqrt_inverse").tolist() == pytest.approx(np.sqrt(balanced.numpy()).tolist())
    assert class_weights(labels, 2, "none") is None


# --------------------------------------------------------------------------- every loss on every task


def task_data(task: str, n: int = 48, seed: int = 0) -> tuple[tuple, tuple, ProcessedMeta]:
    """(train, val, meta) for `task` as preprocess makes them: images with integer
    labels (binary, multiclass) or a 0/1 matrix (multilabel), and a small encoded
    table with a float count target for regression."""
    rng = np.random.default_rng(seed)
    cut = n * 2 // 3
    if task == "regression":
        frame = pd.DataFrame({"size": rng.uniform(0, 10, n), "colour": rng.choice(["red", "blue"], n)})
        frame.loc[3, "size"] = np.nan  # imputed by the encoder
        # A count target (Poisson's domain), 0..6.
        y = (frame["size"].fillna(5.0) // 2 + (frame["colour"] == "red")).to_numpy(np.float32)
        encoder = fit_encoder(frame.iloc[:cut], {"size": "numeric", "colour": "categorical"}, "mean")
        x = encoder.encode(frame)
        train_x, train_y = x[:cut], y[:cut]
        meta = ProcessedMeta(
            kind="tabular",
            task="regression",
            classes=(),
            input_shape=(encoder.width,),
            mean=tuple(train_x.mean(axis=0).tolist()),
            std=tuple(np.maximum(train_x.std(axis=0), 1e-6).tolist()),
            data_hash="h",
            resample="none",
            counts={},
            encoder=encoder,
            target_mean=float(train_y.mean()),
            target_std=float(train_y.std()),
        )
    elif task == "multilabel":
        digits = rng.integers(0, 10, n)
        x = (rng.uniform(0, 8, (n, 1, 8, 8)) + 0.8 * digits[:, None, None, None]).astype(np.float32)
        y = np.asarray(DIGIT_ATTRIBUTE_MATRIX, np.float32)[digits]
        meta = image_meta(task="multilabel", classes=DIGIT_ATTRIBUTES, data_hash="h")
    else:
        classes = ("neg", "pos") if task == "binary" else ("a", "b", "c")
        x, y = toy(n, classes=len(classes), seed=seed)
        meta = image_meta(task=task, classes=classes, data_hash="h")
    return (x[:cut], y[:cut]), (x[cut:], y[cut:]), meta


def weighting_for(loss: str, task: str = "multiclass") -> str:
    """Class weights wherever the loss takes them; none where it would ignore them."""
    ignores = loss in UNWEIGHTED_LOSSES or (loss == "focal" and task in SIGMOID_TASKS)
    return "none" if ignores else "balanced"


def assert_one_finite_epoch(model, result, val) -> None:
    assert result.epochs_run == 1
    assert np.isfinite(result.history[0]["train_loss"]) and np.isfinite(result.history[0]["val_loss"])
    assert np.isfinite(predict_logits(model, val[0])).all()


@pytest.mark.parametrize("loss", sorted(LOSS_TASKS))
@pytest.mark.parametrize("task", TASK_TYPES)
def test_every_loss_is_refused_for_a_task_it_does_not_fit_or_trains_a_teacher(task: str, loss: str) -> None:
    params = train_params(loss=loss, class_weighting=weighting_for(loss, task), max_epochs=1)
    if task not in LOSS_TASKS[loss] or loss in NOT_WIRED:
        why = "is not supported" if task in LOSS_TASKS[loss] else f"does not fit a {task} task"
        with pytest.raises(DistilleryError, match=rf"^params\.yaml: 'train\.loss': loss '{loss}' {why}"):
            check_fit_params(params, "train", task)
        return
    check_fit_params(params, "train", task)
    train, val, meta = task_data(task)
    model, result = train_teacher(train, val, meta, params, quiet=True)
    assert model.spec.n_classes == n_outputs(task, params, meta.n_classes)
    assert_one_finite_epoch(model, result, val)


@pytest.mark.parametrize("loss", sorted(LOSS_TASKS))
@pytest.mark.parametrize("task", TASK_TYPES)
def test_every_loss_is_refused_for_a_task_it_does_not_fit_or_distils_a_student(task: str, loss: str) -> None:
    params = params_section(
        "distill", loss=loss, channels=(2,), hidden=4, mlp_layers=(4,), max_epochs=1, patience=3, batch_size=16
    )
    if task not in LOSS_TASKS[loss] or loss in NOT_WIRED:
        why = "is not supported" if task in LOSS_TASKS[loss] else f"does not fit a {task} task"
        with pytest.raises(DistilleryError, match=rf"^params\.yaml: 'distill\.loss': loss '{loss}' {why}"):
            check_fit_params(params, "distill", task)
        return
    check_fit_params(params, "distill", task)
    train, val, meta = task_data(task)
    torch.manual_seed(0)
    teacher_params = train_params(mlp_layers=(8,))
    teacher = build_model(spec_for(meta, teacher_params, n_outputs(task, teacher_params, meta.n_classes))).eval()
    student, result = distill_student(teacher, train, val, meta, params)
    assert_one_finite_epoch(student, result, val)


def test_poisson_is_refused_when_params_are_read_not_at_the_first_batch() -> None:
    """The MLP predicts in target units and poisson reads its output as a log-rate:
    on a target with a large mean (diabetes, ~150) exp() overflowed at the first
    batch. Until the model has a log link, the loss is refused up front."""
    with pytest.raises(DistilleryError, match=r"^params\.yaml: 'train\.loss': loss 'poisson' is not supported"):
        check_fit_params(train_params(loss="poisson", class_weighting="none"), "train", "regression")


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_a_sigmoid_focal_loss_refuses_class_weights_it_would_ignore(task: str) -> None:
    with pytest.raises(DistilleryError, match=r"^params\.yaml: 'train\.class_weighting': .*focal"):
        check_fit_params(train_params(loss="focal", class_weighting="balanced"), "train", task)
    check_fit_params(train_params(loss="focal", class_weighting="none"), "train", task)


@pytest.mark.parametrize(
    ("task", "loss"),
    [
        (task, loss)
        for loss in UNWEIGHTED_LOSSES
        for task in TASK_TYPES
        if task != "regression" and task in LOSS_TASKS[loss]
    ],
)
def test_a_loss_that_takes_no_class_weights_refuses_a_weighting(task: str, loss: str) -> None:
    for scheme in ("balanced", "sqrt_inverse"):
        with pytest.raises(DistilleryError, match=r"^params\.yaml: 'train\.class_weighting': .*no class weights"):
            check_fit_params(train_params(loss=loss, class_weighting=scheme), "train", task)
    check_fit_params(train_params(loss=loss, class_weighting="none"), "train", task)


@pytest.mark.parametrize("loss", ["ce_onehot", "kl_div"])
def test_probability_target_losses_train_on_integer_multiclass_labels(loss: str) -> None:
    """ce_onehot and kl_div take a distribution per row; the labels are integers,
    which they used to receive as is and crash on at the first batch."""
    weighting = weighting_for(loss)
    params = train_params(loss=loss, class_weighting=weighting, max_epochs=3, patience=5)
    check_fit_params(params, "train", "multiclass")
    (x, y), val, meta = task_data("multiclass")
    model, result = train_teacher((x, y), val, meta, params, quiet=True)
    assert result.epochs_run == 3
    assert all(np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"]) for row in result.history)
    # On one-hot rows both equal the cross-entropy of the labels (KL(onehot || p) = -log p_y),
    # weighted as ce is for ce_onehot.
    weights = class_weights(y, 3, weighting)
    logits, labels = torch.randn(7, 3, generator=torch.Generator().manual_seed(0)), torch.as_tensor(y[:7])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    assert task_loss("multiclass", params, weights)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


# --------------------------------------------------------------------------- binary head


def test_binary_bce_has_one_logit_and_exports_two_probabilities(tmp_path: Path) -> None:
    meta = image_meta(task="binary", classes=("neg", "pos"), data_hash="h")
    params = train_params(loss="auto", class_weighting="balanced", max_epochs=4)
    assert n_outputs("binary", params, 2) == 1 and n_outputs("multiclass", params, 2) == 2
    train, val = toy(80, classes=2), toy(40, classes=2, seed=1)
    model, _ = train_teacher(train, val, meta, params, quiet=True)
    assert model.spec.n_classes == 1
    logits = predict_logits(model, val[0])
    assert logits.shape == (40, 1)
    export = params_section("export", temperature_scaling=False, calibration_samples=16)
    export_candidate(
        "bin", model, val, train[0][:16], artifact_metadata(meta, export.label_threshold), export, tmp_path
    )
    probabilities = run_batches(session(tmp_path / "bin.fp32.onnx"), val[0], output=PROBABILITIES)
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
    four = image_meta(classes=("a", "b", "c", "d"), data_hash="h")
    params = train_params(init_from=str(tmp_path / "base"), freeze=("features",), unfreeze_after=0, max_epochs=2)
    model, _ = train_teacher(toy(classes=4), toy(30, classes=4, seed=1), four, params, quiet=True)
    for name, value in source.state_dict().items():
        if name.startswith("features") and "num_batches" not in name and "running" not in name:
            assert torch.equal(value, model.state_dict()[name]), name  # frozen: unchanged
    assert model.state_dict()["head.5.weight"].shape == (4, 6)  # the new head for four classes


def test_unfreeze_after_lets_frozen_layers_train(tmp_path: Path) -> None:
    source, _ = train_teacher(toy(), toy(30, seed=1), META, train_params(), quiet=True)
    save_model(source, tmp_path / "base")
    params = train_params(
        init_from=str(tmp_path / "base"), freeze=("features",), unfreeze_after=1, max_epochs=3, patience=5
    )
    model, _ = train_teacher(toy(), toy(30, seed=1), META, params, quiet=True)
    conv = "features.1.weight"
    assert not torch.equal(source.state_dict()[conv], model.state_dict()[conv])


def test_start_from_refuses_an_unrelated_checkpoint(tmp_path: Path) -> None:
    other = image_meta(input_shape=(1, 8, 8), data_hash="h")
    source, _ = train_teacher(toy(), toy(30, seed=1), other, train_params(channels=(5,), hidden=7), quiet=True)
    save_model(source, tmp_path / "other")
    model, _ = train_teacher(
        toy(), toy(30, seed=1), META, train_params(channels=(3,), hidden=6, max_epochs=1), quiet=True
    )
    missing = start_from(model, str(tmp_path / "other"))
    assert "features.1.weight" in missing  # conv widths differ: not copied


def test_a_student_larger_than_its_teacher_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DistilleryError, match=r"student .* must not be larger than the teacher"):
        load_params(write_params(tmp_path, distill__channels=[64, 128]))
