"""tasks/doodles.py: Quick Draw-format files that the quickdraw source reads."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.core.params import QuickDrawParams
from tasks.data.sources import load_quickdraw
from tasks.doodles import CLASSES, make_doodles


def test_doodles_are_quick_draw_bitmaps_the_source_reads(tmp_path):
    files = make_doodles(tmp_path, {name: 5 + i for i, name in enumerate(CLASSES)}, seed=3)
    assert len(CLASSES) == 10 and set(files) == set(CLASSES)
    for i, name in enumerate(CLASSES):
        bitmaps = np.load(files[name])
        assert bitmaps.shape == (5 + i, 784) and bitmaps.dtype == np.uint8
        assert bitmaps.max() >= 200 and (bitmaps == 0).mean() > 0.5  # white strokes on black
    params = QuickDrawParams(classes=CLASSES, samples_per_class={name: 5 for name in CLASSES})
    data = load_quickdraw(tmp_path, params, seed=0)
    assert data.images.shape == (50, 28, 28) and list(np.bincount(data.labels)) == [5] * 10


def test_doodles_are_seeded_and_vary_within_a_class(tmp_path):
    a = np.load(make_doodles(tmp_path / "a", 6, seed=1)["circle"])
    b = np.load(make_doodles(tmp_path / "b", 6, seed=1)["circle"])
    c = np.load(make_doodles(tmp_path / "c", 6, seed=2)["circle"])
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({row.tobytes() for row in a}) == 6


def test_classes_are_told_apart_by_their_mean_drawing(tmp_path):
    """Each class's drawings are nearer their own class mean than another's (a sanity bound on separability)."""
    files = make_doodles(tmp_path, 40, seed=0)
    x = {n: np.load(f).astype(float) for n, f in files.items()}
    means = {n: v[:20].mean(axis=0) for n, v in x.items()}
    names = list(means)
    hits = [
        names[int(np.argmin([np.linalg.norm(row - means[m]) for m in names]))] == n
        for n, v in x.items()
        for row in v[20:]
    ]
    assert np.mean(hits) >= 0.6


def test_an_unknown_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no doodle shape for \\['dragon'\\]"):
        make_doodles(tmp_path, 3, classes=("circle", "dragon"))
