"""Quick Draw-format doodles made here, for trying the `quickdraw` source with
no download: one `<class>.npy` per class, N x 784 uint8, white strokes on
black, exactly the layout of Quick Draw's `numpy_bitmap` files. A tool, like
bootstrap_suite: no stage imports it, so it is no stage's dependency.

    python -m tasks.doodles data/raw [--count 1000] [--seed 0]

Each class is a shape drawn as pen strokes (circle, square, triangle, ...)
through a random affine map (rotation, zoom, shift, shear) with jitter on
every stroke point and a random pen width, so drawings of one class differ
as hand-drawn doodles do, and some look alike across classes (square and
plus at an angle, zigzag and line). Seeded: the same arguments give the same
bytes. This is synthetic data for exercising the pipeline (10 classes of
28x28 doodles), not a substitute for the real drawings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tasks.core.io import atomic_path

SIDE = 28
PEN_STEP = 0.5  # pixels between the points sampled along a stroke


def _polyline(*points: tuple[float, float]) -> np.ndarray:
    return np.asarray(points, dtype=np.float64)


def _arc(turns: float, radius_growth: float = 0.0, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi * turns, n)
    radius = 0.8 * (1 - radius_growth + radius_growth * t / t[-1])
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


# Strokes of each class in a [-1, 1]^2 frame (y down); a class is a list of strokes.
SHAPES: dict[str, list[np.ndarray]] = {
    "circle": [_arc(1.0)],
    "square": [_polyline((-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7), (-0.7, -0.7))],
    "triangle": [_polyline((0.0, -0.8), (0.75, 0.6), (-0.75, 0.6), (0.0, -0.8))],
    "line": [_polyline((-0.8, 0.0), (0.8, 0.0))],
    "plus": [_polyline((-0.75, 0.0), (0.75, 0.0)), _polyline((0.0, -0.75), (0.0, 0.75))],
    "cross": [_polyline((-0.65, -0.65), (0.65, 0.65)), _polyline((-0.65, 0.65), (0.65, -0.65))],
    "zigzag": [_polyline((-0.8, 0.3), (-0.4, -0.3), (0.0, 0.3), (0.4, -0.3), (0.8, 0.3))],
    "spiral": [_arc(2.0, radius_growth=0.9, n=48)],
    "house": [_polyline((-0.6, 0.7), (-0.6, -0.1), (0.0, -0.75), (0.6, -0.1), (0.6, 0.7), (-0.6, 0.7))],
    "star": [_polyline(*[(0.8 * np.sin(a), -0.8 * np.cos(a)) for a in np.arange(6) * 4 * np.pi / 5])],
}
CLASSES = tuple(SHAPES)


def _draw(strokes: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One 28x28 uint8 doodle of `strokes` under a random affine map and pen."""
    angle = rng.uniform(-0.35, 0.35)
    zoom = rng.uniform(0.75, 1.05)
    shear = rng.uniform(-0.2, 0.2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    affine = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) * zoom * (SIDE / 2 - 3)
    centre = SIDE / 2 - 0.5 + rng.uniform(-2, 2, 2)
    width = rng.uniform(0.7, 1.4)  # pen radius, pixels
    dense = []
    for stroke in strokes:
        points = (stroke + rng.normal(0, 0.04, stroke.shape)) @ affine.T + centre  # a hand's wobble; pixels
        for start, end in zip(points[:-1], points[1:]):  # samples every half pixel along each segment
            t = np.linspace(0, 1, int(np.ceil(np.hypot(*(end - start)) / PEN_STEP)) + 1)[:, None]
            dense.append(start * (1 - t) + end * t)
    pen = np.concatenate(dense)  # (P, 2) as x, y
    grid = np.stack(np.mgrid[0:SIDE, 0:SIDE][::-1], axis=-1).reshape(-1, 1, 2)  # (784, 1, 2) as x, y
    nearest = ((grid - pen) ** 2).sum(axis=-1).min(axis=1)  # squared distance to the stroke, per pixel
    canvas = np.exp(-nearest / (2 * width**2)).reshape(SIDE, SIDE)  # a soft pen
    return np.clip(canvas * 255, 0, 255).astype(np.uint8)


def make_doodles(
    folder: str | Path, count: int | dict[str, int] = 1000, seed: int = 0, classes: tuple[str, ...] = CLASSES
) -> dict[str, Path]:
    """Write `<class>.npy` (count x 784 uint8) for each class into `folder`;
    `count` may differ per class. Returns class -> file."""
    unknown = sorted(set(classes) - set(SHAPES))
    if unknown:
        raise ValueError(f"no doodle shape for {unknown}; known: {list(SHAPES)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for index, name in enumerate(classes):
        n = count[name] if isinstance(count, dict) else count
        rng = np.random.default_rng([seed, index])  # one stream per class: adding a class changes no other
        bitmaps = (
            np.stack([_draw(SHAPES[name], rng).reshape(-1) for _ in range(n)])
            if n
            else np.zeros((0, SIDE * SIDE), np.uint8)
        )
        files[name] = folder / f"{name}.npy"
        with atomic_path(files[name]) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, bitmaps, allow_pickle=False)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="where the <class>.npy files go (data.path)")
    parser.add_argument("--count", type=int, default=1000, help="drawings per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in make_doodles(args.folder, args.count, args.seed).items():
        print(f"{path}: {args.count} drawings of {name}")


if __name__ == "__main__":
    main()
