"""Model architectures and their self-describing artifacts.

Weights are stored as safetensors next to a JSON of constructor arguments; no
pickle is ever loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tasks.contracts.processed import ProcessedMeta
from tasks.core.errors import DistilleryError
from tasks.core.io import atomic_path, write_json
from tasks.core.params import FitParams
from tasks.core.task import kind_of


@dataclass(frozen=True)
class CNNSpec:
    input_shape: tuple[int, int, int]  # C, H, W of the raw input
    channels: tuple[int, ...]  # output channels of each conv block
    hidden: int  # width of the dense layer before the classifier
    n_classes: int
    dropout: float
    mean: tuple[float, ...]  # per-channel normalisation, raw pixel units
    std: tuple[float, ...]
    batch_norm: bool = True

    @classmethod
    def from_json(cls, data: dict) -> "CNNSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class Normalize(nn.Module):
    """(x - mean) / std inside the graph, so the model takes raw values.
    Stats are per channel for images (N, C, H, W), per feature for tables (N, F)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], image: bool = True):
        super().__init__()
        shape = (1, -1, 1, 1) if image else (1, -1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(*shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(*shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class CNN(nn.Module):
    """Conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool while the map is
    large enough), then a dropout-regularised dense head."""

    def __init__(self, spec: CNNSpec):
        super().__init__()
        self.spec = spec
        in_ch, height, width = spec.input_shape
        layers: list[nn.Module] = [Normalize(spec.mean, spec.std)]
        for out_ch in spec.channels:
            norm = [nn.BatchNorm2d(out_ch)] if spec.batch_norm else []
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not spec.batch_norm), *norm, nn.ReLU()]
            if min(height, width) >= 4:  # keep at least a 2x2 map for tiny inputs
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(spec.dropout),
            nn.Linear(in_ch * height * width, spec.hidden),
            nn.ReLU(),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, spec.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class MLPSpec:
    n_features: int  # width of the encoded feature vector
    layers: tuple[int, ...]  # hidden layer widths
    n_classes: int
    dropout: float
    mean: tuple[float, ...]  # per-feature standardisation, fitted on the train split
    std: tuple[float, ...]
    batch_norm: bool = True
    target_mean: float = 0.0  # regression: outputs are scaled back to the target's units in the graph
    target_std: float = 1.0

    @property
    def input_shape(self) -> tuple[int]:
        return (self.n_features,)

    @classmethod
    def from_json(cls, data: dict) -> "MLPSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class MLP(nn.Module):
    """Standardise, then Linear -> BatchNorm -> ReLU -> Dropout per hidden layer."""

    def __init__(self, spec: MLPSpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = [Normalize(spec.mean, spec.std, image=False)]
        width = spec.n_features
        for out in spec.layers:
            norm = [nn.BatchNorm1d(out)] if spec.batch_norm else []
            layers += [nn.Linear(width, out, bias=not spec.batch_norm), *norm, nn.ReLU(), nn.Dropout(spec.dropout)]
            width = out
        layers.append(nn.Linear(width, spec.n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.spec.target_std + self.spec.target_mean


ARCHITECTURES = {"CNN": (CNN, CNNSpec), "MLP": (MLP, MLPSpec)}
Model = CNN | MLP


def build_model(spec: CNNSpec | MLPSpec) -> Model:
    return MLP(spec) if isinstance(spec, MLPSpec) else CNN(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: Model, stem: str | Path) -> None:
    """Write `<stem>.safetensors` and `<stem>.json`."""
    from safetensors.torch import save_file

    stem = Path(stem)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file(state, str(tmp))
    write_json(stem.with_suffix(".json"), {"architecture": type(model).__name__, "spec": asdict(model.spec)})


def load_model(stem: str | Path) -> Model:
    """Rebuild a model from its JSON and load its safetensors weights, checking both."""
    from safetensors.torch import load_file

    stem = Path(stem)
    spec_path, weights_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for path in (spec_path, weights_path):
        if not path.exists():
            raise DistilleryError(f"{path}: model artifact not found; run the stage that writes it first")
    try:
        described = json.loads(spec_path.read_text())
        model_cls, spec_cls = ARCHITECTURES[described.get("architecture", "CNN")]
        spec = spec_cls.from_json(described["spec"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:  # AttributeError: not a JSON object
        raise DistilleryError(f"{spec_path}: not a valid model description ({err})") from err
    model = model_cls(spec)
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except Exception as err:  # safetensors and torch raise several types here
        raise DistilleryError(f"{weights_path}: weights do not match {spec_path} ({err})") from err
    return model.eval()


def spec_for(meta: ProcessedMeta, params: FitParams, outputs: int | None = None) -> CNNSpec | MLPSpec:
    """The architecture for the processed data described by `meta`: a CNN for
    images, an MLP for tables, with `outputs` logits (default: one per class)."""
    outputs = outputs or max(1, meta.n_classes)
    if kind_of(meta.kind).table:
        return MLPSpec(
            n_features=int(meta.input_shape[0]),
            layers=tuple(params.mlp_layers),
            n_classes=outputs,
            dropout=params.dropout,
            mean=tuple(meta.mean),
            std=tuple(meta.std),
            batch_norm=params.batch_norm,
            target_mean=meta.target_mean,
            target_std=meta.target_std,
        )
    return CNNSpec(
        input_shape=tuple(meta.input_shape),
        channels=tuple(params.channels),
        hidden=params.hidden,
        n_classes=outputs,
        dropout=params.dropout,
        mean=tuple(meta.mean),
        std=tuple(meta.std),
        batch_norm=params.batch_norm,
    )


def predict_logits(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """The model's raw outputs for `x`, in eval mode and batches, on the model's device; as numpy."""
    device = next(model.parameters()).device
    x = torch.as_tensor(x, dtype=torch.float32)
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            outputs.append(model(x[start : start + batch_size].to(device)).cpu())
    return torch.cat(outputs).numpy()
