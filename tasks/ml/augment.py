"""Training-time augmentation of image batches: the train split only, batch by
batch, on the device that trains, drawn from a seeded generator on the CPU so
a run repeats bit for bit there.

Per picture: one random affine map (rotation, zoom, shift; a horizontal flip
where the classes allow it), then random erasing. Per batch: mixup or cutmix,
which blend two pictures and so two targets; `fit` weighs the loss of both
targets by the blend (`Mix`). Inputs are raw pixels (the model normalises
inside its graph), so the border a shift uncovers is 0, the bundled sources'
black background.

Function-matching distillation (tasks/ml/distillation.py) runs the teacher on
the very view the student sees, mixed pictures included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from tasks.core.params import AugmentParams


@dataclass(frozen=True)
class Mix:
    """Row i of the batch is lam * picture i + (1 - lam) * picture perm[i]."""

    perm: torch.Tensor
    lam: float


class Augmenter:
    def __init__(self, params: AugmentParams, seed: int):
        self.params = params
        # CPU draws, moved to the batch's device: the same numbers on a CPU or a GPU run.
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def _uniform(self, n: int, half_width: float, *shape: int) -> torch.Tensor:
        return (torch.rand(n, *shape, generator=self.generator) * 2 - 1) * half_width

    def affine(self, x: torch.Tensor) -> torch.Tensor:
        """Rotation in +-rotate_deg, zoom in 1 +- scale, shift in +-shift (a fraction
        of the side) per axis, and a horizontal flip with probability 1/2 when `flip`."""
        p = self.params
        n = len(x)
        angle = self._uniform(n, math.radians(p.rotate_deg))
        zoom = 1 + self._uniform(n, p.scale)
        shift = self._uniform(n, 2 * p.shift, 2)  # affine_grid spans a side as [-1, 1]
        mirror = torch.where(torch.rand(n, generator=self.generator) < 0.5, -1.0, 1.0) if p.flip else torch.ones(n)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # affine_grid maps output coordinates to input ones: the inverse of the picture's motion.
        theta = torch.stack(
            [
                torch.stack([cos * mirror, -sin, shift[:, 0]], dim=1),
                torch.stack([sin * mirror, cos, shift[:, 1]], dim=1),
            ],
            dim=1,
        ).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        """Random erasing (Zhong et al. 2020): with probability `erase`, a
        rectangle of 2-20% of the picture, aspect 0.3-3.3, set to 0."""
        n, _, height, width = x.shape
        chosen = torch.rand(n, generator=self.generator) < self.params.erase
        area = (0.02 + 0.18 * torch.rand(n, generator=self.generator)) * height * width
        aspect = torch.exp(torch.empty(n).uniform_(math.log(0.3), math.log(1 / 0.3), generator=self.generator))
        h = torch.clamp((area * aspect).sqrt().round(), 1, height).long()
        w = torch.clamp((area / aspect).sqrt().round(), 1, width).long()
        top = (torch.rand(n, generator=self.generator) * (height - h + 1)).long()
        left = (torch.rand(n, generator=self.generator) * (width - w + 1)).long()
        rows, cols = torch.arange(height), torch.arange(width)
        inside = (
            ((rows[None, :] >= top[:, None]) & (rows[None, :] < (top + h)[:, None]))[:, :, None]
            & ((cols[None, :] >= left[:, None]) & (cols[None, :] < (left + w)[:, None]))[:, None, :]
            & chosen[:, None, None]
        )
        return x.masked_fill(inside[:, None].to(x.device), 0.0)

    def mix(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[Mix]]:
        """Mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019), one per batch
        (a coin decides when both are on), lam ~ Beta(a, a)."""
        p = self.params
        kinds = [k for k, a in (("mixup", p.mixup), ("cutmix", p.cutmix)) if a > 0]
        if not kinds:
            return x, None
        kind = kinds[int(self.rng.integers(len(kinds)))]
        lam = float(self.rng.beta(getattr(p, kind), getattr(p, kind)))
        perm = torch.randperm(len(x), generator=self.generator).to(x.device)
        if kind == "mixup":
            return lam * x + (1 - lam) * x[perm], Mix(perm, lam)
        _, _, height, width = x.shape
        cut = math.sqrt(1 - lam)
        h, w = int(round(height * cut)), int(round(width * cut))
        top, left = int(self.rng.integers(height - h + 1)), int(self.rng.integers(width - w + 1))
        mixed = x.clone()
        mixed[:, :, top : top + h, left : left + w] = x[perm][:, :, top : top + h, left : left + w]
        return mixed, Mix(perm, 1 - h * w / (height * width))  # lam of the area actually kept

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[Mix]]:
        p = self.params
        if p.rotate_deg or p.scale or p.shift or p.flip:
            x = self.affine(x)
        if p.erase:
            x = self.erase(x)
        return self.mix(x)


def augments(params: Optional[AugmentParams], x: np.ndarray | torch.Tensor) -> bool:
    """Whether a train split `x` is augmented: pictures (N, C, H, W) of at least
    `min_side` pixels a side; tables never."""
    return params is not None and params.enabled and x.ndim == 4 and min(x.shape[2:]) >= params.min_side


def augmenter(params: Optional[AugmentParams], x: torch.Tensor, seed: int) -> Optional[Augmenter]:
    """The augmenter for a train split `x`, or None where it is not augmented (`augments`)."""
    return Augmenter(params, seed) if params is not None and augments(params, x) else None
