"""Small shared helpers for the unit tests: the repo root, the repo's params as
defaults for params objects, and a tiny CNN spec."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import pytest

from tasks.contracts.processed import ProcessedMeta
from tasks.core.params import Params, load_params
from tasks.ml.models import CNNSpec

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@functools.cache
def repo_params() -> Params:
    return load_params(REPO_ROOT / "params.yaml")


def params_section(name: str, **overrides: Any) -> Any:
    """The repo's `params.yaml` section `name` with `overrides`, so a test states
    only the knobs it depends on (and survives new keys elsewhere in the section)."""
    return dataclasses.replace(getattr(repo_params(), name), **overrides)


def tiny_spec(channels: tuple[int, ...] = (4,), hidden: int = 8, n_classes: int = 3, dropout: float = 0.0) -> CNNSpec:
    """A CNN for 1x8x8 inputs in raw 0..16 pixel units: a few hundred parameters."""
    return CNNSpec(
        input_shape=(1, 8, 8),
        channels=channels,
        hidden=hidden,
        n_classes=n_classes,
        dropout=dropout,
        mean=(8.0,),
        std=(4.0,),
    )


def image_meta(
    task: str = "multiclass",
    classes: tuple[str, ...] = ("a", "b", "c"),
    input_shape: tuple[int, ...] = (1, 8, 8),
    **fields: Any,
) -> ProcessedMeta:
    """A ProcessedMeta for images in raw 0..16 units, built through the contract."""
    values = dict(
        kind="image",
        task=task,
        classes=classes,
        input_shape=input_shape,
        mean=(8.0,),
        std=(4.0,),
        data_hash="test",
        resample="none",
        counts={},
        pixel_max=16.0,
    )
    return ProcessedMeta(**{**values, **fields})
