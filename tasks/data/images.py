"""A folder of pictures (data.source images): find the files and their classes,
decode them with the policy (tasks.contracts.image) on every core, and keep
the files that cannot be read, with the decoder's reason, for the gate to
quarantine.

Layouts, tried in this order:
- a `metadata.csv` (Hugging Face imagefolder) at the top or in each split
  folder: `file_name` relative to the csv, and a label column (`label`, or
  the only other column);
- torchvision's ImageFolder: `<folder>/<class>/<file>` (files in nested
  folders under a class count for it);
- Hugging Face split folders (`train/`, `test/`, `validation/` ...), each
  holding class folders: the splits are merged; preprocess makes its own.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from tasks.contracts.image import ImagePolicy, UnreadableImage, decode
from tasks.core.errors import DistilleryError
from tasks.core.params import ImagesParams

# The extensions read, and the format (Pillow's name) each promises: a file whose bytes are
# another format is read by its bytes, and reported (quality.picture_flags, extension_mismatch).
FORMAT_OF_EXTENSION = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
EXTENSIONS = frozenset(FORMAT_OF_EXTENSION)
SPLIT_FOLDERS = frozenset({"train", "test", "validation", "valid", "val"})
METADATA = "metadata.csv"
POOL_FROM = 256  # files; fewer decode faster in this process than a pool takes to start
# The per-picture columns ingest adds to the table (the gate checks them; "" = read).
FILE, FORMAT, WIDTH, HEIGHT, MODE, SOURCE_CHANNELS, ORIENTATION, ERROR = (
    "file",
    "format",
    "source_width",
    "source_height",
    "source_mode",
    "source_channels",
    "source_orientation",  # EXIF orientation as stored: 1 upright, 2..8 turned or mirrored (applied); 0 unreadable
    "decode_error",
)


def policy_of(params: ImagesParams) -> ImagePolicy:
    return ImagePolicy(size=params.size, channels=params.channels, fit=params.fit)


@dataclass(frozen=True)
class FolderImages:
    images: np.ndarray  # (N, *policy.shape) uint8; zeros for an unreadable file
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    details: pd.DataFrame  # one row per file: FILE and the columns _decode_one gives
    layout: str


def _is_picture(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def _pictures_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_picture(p))


def find_files(folder: Path) -> tuple[list[tuple[Path, str]], str]:
    """(file, class name) pairs, and the layout they were found in."""
    csvs = [folder / METADATA] if (folder / METADATA).is_file() else sorted(folder.glob(f"*/{METADATA}"))
    if csvs:
        return [pair for csv in csvs for pair in _from_metadata(csv)], "metadata.csv"
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits = [p for p in subfolders if p.name.lower() in SPLIT_FOLDERS]
    if splits and len(splits) == len(subfolders):
        pairs = [
            (file, cls.name)
            for split in splits
            for cls in sorted(c for c in split.iterdir() if c.is_dir())
            for file in _pictures_under(cls)
        ]
        return pairs, "split folders (" + ", ".join(p.name for p in splits) + ")"
    return [(file, cls.name) for cls in subfolders for file in _pictures_under(cls)], "class folders"


def _from_metadata(csv: Path) -> list[tuple[Path, str]]:
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if "file_name" not in table.columns:
        raise DistilleryError(
            f"{csv}: needs a 'file_name' column (Hugging Face imagefolder); has {list(table.columns)}"
        )
    others = [c for c in table.columns if c != "file_name"]
    label = "label" if "label" in others else others[0] if len(others) == 1 else None
    if label is None:
        raise DistilleryError(f"{csv}: name the label column 'label' (columns: {list(table.columns)})")
    return [(csv.parent / name, str(value)) for name, value in zip(table["file_name"], table[label])]


def _decode_one(job: tuple[str, ImagePolicy, Optional[int]]) -> tuple[Optional[np.ndarray], dict]:
    path, policy, max_pixels = job
    try:
        got = decode(path, policy, max_pixels)
    except UnreadableImage as err:
        # No format (null, not ""): the format-mix expectation counts the formats of the files read.
        return None, {FORMAT: None, WIDTH: 0, HEIGHT: 0, MODE: "", SOURCE_CHANNELS: 0, ORIENTATION: 0, ERROR: str(err)}
    info = {
        FORMAT: got.format,
        WIDTH: got.width,
        HEIGHT: got.height,
        MODE: got.mode,
        SOURCE_CHANNELS: got.channels,
        ORIENTATION: got.orientation,
        ERROR: "",
    }
    return got.pixels, info


def decode_all(files: list[Path], policy: ImagePolicy, max_pixels: Optional[int], workers: int) -> list:
    """Decode on `workers` processes with a progress bar when there are many files."""
    jobs = [(str(f), policy, max_pixels) for f in files]
    if len(jobs) < POOL_FROM or workers < 2:
        return [_decode_one(job) for job in jobs]
    from tqdm import tqdm

    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(
            tqdm(pool.map(_decode_one, jobs, chunksize=64), total=len(jobs), desc="decoding pictures", unit="file")
        )


def load_images(folder: str | Path | None, params: ImagesParams, seed: int) -> FolderImages:
    """Every picture under `folder` (at most params.max_per_class per class, seeded),
    decoded with the policy; an unreadable file is kept as a row with its reason."""
    from PIL import Image

    if folder is None:
        raise DistilleryError("params.yaml: 'data.path' must name the folder of pictures for source images")
    root = Path(folder)
    if not root.is_dir():
        raise DistilleryError(f"{root}: folder of pictures not found (params.yaml 'data.path')")
    pairs, layout = find_files(root)
    classes = tuple(sorted({cls for _, cls in pairs}))
    if not pairs:
        raise DistilleryError(
            f"{root}: no pictures found ({', '.join(sorted(EXTENSIONS))}); expected <folder>/<class>/<file>, "
            f"split folders of class folders, or a {METADATA} with file_name and label"
        )
    rng = np.random.default_rng(seed)
    kept: list[tuple[Path, str]] = []
    for cls in classes:
        members = [pair for pair in pairs if pair[1] == cls]
        if params.max_per_class is not None and len(members) > params.max_per_class:
            pick = np.sort(rng.choice(len(members), size=params.max_per_class, replace=False))
            members = [members[i] for i in pick]
        kept += members
    policy = policy_of(params)
    decoded = decode_all([f for f, _ in kept], policy, Image.MAX_IMAGE_PIXELS, os.cpu_count() or 1)
    images = np.zeros((len(kept), *policy.shape), np.uint8)
    for i, (pixels, _) in enumerate(decoded):
        if pixels is not None:
            images[i] = pixels
    details = pd.DataFrame([info for _, info in decoded])
    details.insert(0, FILE, [_relative(f, root) for f, _ in kept])
    index = {c: i for i, c in enumerate(classes)}
    return FolderImages(
        images=images,
        labels=np.array([index[c] for _, c in kept], np.int64),
        classes=classes,
        details=details,
        layout=layout,
    )


def _relative(file: Path, root: Path) -> str:
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return str(file)
