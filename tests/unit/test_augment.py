"""Augmentation (tasks/ml/augment.py) and what training does with it: seeded
views of a picture batch, mixup/cutmix targets weighed by the blend, and
function-matching distillation running the teacher on the very view the
student sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import image_meta, params_section, tiny_spec

from tasks.core.params import AugmentParams
from tasks.ml.augment import Augmenter, augmenter
from tasks.ml.distillation import distill_mode, distill_student
from tasks.ml.fitting import train_teacher
from tasks.ml.models import build_model

OFF = AugmentParams(enabled=True, min_side=4, rotate_deg=0, scale=0, shift=0, flip=False, erase=0, mixup=0, cutmix=0)


def aug(**on) -> AugmentParams:
    return params_section("augment", **{**OFF.__dict__, **on})


def batch(n: int = 16, side: int = 12, seed: int = 0) -> torch.Tensor:
    """Bright strokes on black, raw 0..255 units, as the bundled sources draw."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, side, side)
    x[:, :, 3:9, 5:7] = 200 + 55 * torch.rand(n, 1, 6, 2, generator=g)
    return x


def test_the_same_seed_gives_the_same_views_and_another_seed_others():
    x, p = batch(), aug(rotate_deg=15, scale=0.1, shift=0.1, erase=0.5, mixup=0.4)
    first, second, other = Augmenter(p, 3)(x), Augmenter(p, 3)(x), Augmenter(p, 4)(x)
    assert torch.equal(first[0], second[0]) and first[1].lam == second[1].lam
    assert not torch.equal(first[0], other[0])


def test_no_transform_on_is_the_batch_itself():
    x = batch()
    view, mix = Augmenter(OFF, 0)(x)
    assert mix is None and torch.equal(view, x)


def test_a_flip_mirrors_each_picture_or_leaves_it():
    x = batch()
    view, _ = Augmenter(aug(flip=True), 0)(x)
    mirrored = [torch.allclose(v, p.flip(-1), atol=1e-3) for v, p in zip(view, x)]
    kept = [torch.allclose(v, p, atol=1e-3) for v, p in zip(view, x)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert any(mirrored) and any(kept)  # 16 coins: both sides come up


def test_affine_views_move_the_stroke_and_stay_in_the_pixel_range():
    x = batch()
    view, _ = Augmenter(aug(rotate_deg=20, scale=0.1, shift=0.1), 0)(x)
    assert view.shape == x.shape and view.dtype == x.dtype
    assert float(view.min()) >= 0 and float(view.max()) <= float(x.max()) + 1e-4  # bilinear, black border
    assert all(not torch.allclose(v, p, atol=1.0) for v, p in zip(view, x))


def test_random_erasing_blanks_one_rectangle_of_2_to_20_percent():
    x = torch.full((64, 1, 20, 20), 100.0)
    view, _ = Augmenter(aug(erase=1.0), 0)(x)
    zero = (view == 0).reshape(64, -1).float().mean(dim=1)
    assert bool(((zero >= 0.01) & (zero <= 0.25)).all())  # rounding to whole pixels widens 2-20% a little
    for picture in view[:, 0]:
        rows, cols = torch.nonzero(picture == 0, as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(box) == len(rows)  # one solid rectangle


def test_mixup_blends_each_picture_with_a_partner_by_lam():
    x = batch()
    view, mix = Augmenter(aug(mixup=0.4), 0)(x)
    assert mix is not None and 0 <= mix.lam <= 1
    assert torch.allclose(view, mix.lam * x + (1 - mix.lam) * x[mix.perm])


def test_cutmix_pastes_a_box_and_lam_is_the_area_kept():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 10, 10).clone()
    view, mix = Augmenter(aug(cutmix=1.0), 1)(x)
    for i in range(4):
        own = float((view[i] == x[i]).float().mean())
        if int(mix.perm[i]) != i:
            assert own == pytest.approx(mix.lam)


def test_tables_and_disabled_augmentation_get_no_augmenter():
    assert augmenter(aug(rotate_deg=10), torch.zeros(8, 5), 0) is None  # (N, F): a table
    assert augmenter(aug(rotate_deg=10, enabled=False), batch(), 0) is None
    assert isinstance(augmenter(aug(rotate_deg=10), batch(), 0), Augmenter)


def picture_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes told apart by where a bright bar lies (8x8, raw 0..16)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.uniform(0, 2, (n, 1, 8, 8)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 0, :, 1 + 3 * label] += 14
    return np.clip(x, 0, 16), y.astype(np.int64)


def fit_params(section: str, **overrides):
    model = dict(channels=(4,), hidden=8, dropout=0.0, batch_norm=True)
    return params_section(
        section, **{**model, "max_epochs": 2, "patience": 5, "batch_size": 16, "seed": 0, "lr": 0.01, **overrides}
    )


def test_augmented_training_repeats_bit_for_bit_on_the_cpu():
    train, val, meta = picture_data(64, 0), picture_data(32, 1), image_meta()
    p = aug(rotate_deg=10, shift=0.1, erase=0.3, mixup=0.4, cutmix=1.0)
    first, _ = train_teacher(train, val, meta, fit_params("train"), quiet=True, augment=p)
    again, _ = train_teacher(train, val, meta, fit_params("train"), quiet=True, augment=p)
    plain, _ = train_teacher(train, val, meta, fit_params("train"), quiet=True)
    for a, b, c in zip(first.state_dict().values(), again.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(first.state_dict().values(), plain.state_dict().values()))


def test_function_matching_runs_the_teacher_on_every_augmented_batch():
    train, val, meta = picture_data(48, 0), picture_data(16, 1), image_meta()
    teacher = build_model(tiny_spec())
    seen: list[torch.Tensor] = []
    teacher.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    p = aug(rotate_deg=15, shift=0.1)
    params = fit_params("distill", max_epochs=2, mode="function_matching")
    distill_student(teacher, train, val, meta, params, augment=p)
    views = torch.cat(seen[1:])  # the first call is the validation split, once
    assert torch.equal(seen[0], torch.as_tensor(val[0]))
    assert len(views) == 2 * len(train[0])  # every train picture, every epoch: nothing cached
    originals = torch.as_tensor(train[0])
    matches = [(views[i] - originals).abs().amax(dim=(1, 2, 3)).min() < 1e-4 for i in range(len(views))]
    assert not any(matches)  # the teacher saw the augmented views, never the stored pictures


def test_precomputed_mode_runs_the_teacher_once_on_the_stored_pictures():
    train, val, meta = picture_data(48, 0), picture_data(16, 1), image_meta()
    teacher = build_model(tiny_spec())
    seen: list[int] = []
    teacher.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    distill_student(teacher, train, val, meta, fit_params("distill", mode="precomputed"), augment=aug(rotate_deg=15))
    assert sorted(seen) == [16, 48]


@pytest.mark.parametrize(
    ("mode", "augment", "x", "teacher", "expected"),
    [
        ("auto", aug(rotate_deg=10), np.zeros((4, 1, 8, 8)), "net", "function_matching"),
        ("auto", aug(rotate_deg=10, enabled=False), np.zeros((4, 1, 8, 8)), "net", "precomputed"),
        ("auto", aug(rotate_deg=10), np.zeros((4, 5)), "net", "precomputed"),  # a table: no augmentation
        ("function_matching", aug(rotate_deg=10), np.zeros((4, 5)), "outputs", "precomputed"),  # boosted outputs
        ("precomputed", aug(rotate_deg=10), np.zeros((4, 1, 8, 8)), "net", "precomputed"),
    ],
)
def test_auto_is_function_matching_where_batches_are_augmented(mode, augment, x, teacher, expected):
    params = params_section("distill", mode=mode)
    source = build_model(tiny_spec()) if teacher == "net" else (np.zeros((4, 3)), np.zeros((2, 3)))
    assert distill_mode(params, augment, x, source) == expected


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("erase", 1.5, "erase"), ("scale", 1.0, "scale"), ("mixup", -0.1, "mixup"), ("rotate_deg", -1, "rotate_deg")],
)
def test_bad_augment_params_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        aug(**{key: value})


def test_pictures_under_min_side_are_not_augmented():
    assert augmenter(aug(rotate_deg=10, min_side=16), batch(side=12), 0) is None
    assert isinstance(augmenter(aug(rotate_deg=10, min_side=12), batch(side=12), 0), Augmenter)
