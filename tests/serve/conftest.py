"""Fixtures of the serve tests: models built once per session, and servers that
are always stopped (see serve_helpers)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .serve_helpers import Server, image_model, picture_policy, slow_model, table_model


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "image": image_model(folder / "image.onnx", seed=0),
        "image_v2": image_model(folder / "image_v2.onnx", seed=1),
        "image_v3": image_model(folder / "image_v3.onnx", seed=2),
        "four_classes": image_model(folder / "four_classes.onnx", seed=3, n_classes=4),
        "table": table_model(folder / "table.onnx"),
        "slow": slow_model(folder / "slow.onnx"),
        # A model of a folder of pictures: it takes picture files, 16 x 16 RGB (preprocessing.image).
        "picture": image_model(folder / "picture.onnx", seed=4, policy=picture_policy()),
    }


def _factory(workdir: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(model: str | Path, ready: bool = True, **settings: object) -> Server:
        server = Server(workdir, model, **settings)
        started.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def empty_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made: migrating a new one takes
    several seconds, copying this takes none."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("registry") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def registry(empty_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throwaway registry's tracking URI; MLflow's artifacts land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(empty_registry, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """serve(model, **settings) -> a ready Server, stopped after the test."""
    yield from _factory(tmp_path)


@pytest.fixture(scope="module")
def serve_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """The same, for a server shared by a module's tests."""
    yield from _factory(tmp_path_factory.mktemp("server"))
