"""A folder of pictures as a user brings one, with the faults real folders have,
for trying `data.source: images` end to end (docs/data.md):

    python -m bench.faulty_folder /tmp/pictures [--seed 0]

About 5,000 files in `<folder>/<class>/`: the ten digits28 classes (real
digits, tasks/data/sources.py), two of them rare; PNG and JPEG; some RGB with
coloured strokes, some resized (bigger and smaller than 28x28). Injected:
truncated and empty files, a text file named `.jpg`, JPEG bytes named `.png`
and PNG bytes named `.jpg`, one picture filed under two classes, and sideways
photos whose EXIF orientation turns them upright. A manifest of every fault
is written beside the folder (`<folder>.faults.json`), for checking that the
gate reports each one. Seeded: the same arguments give the same files.
"""

from __future__ import annotations

import argparse
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

from tasks.contracts.image import EXIF_ORIENTATION
from tasks.core.params import Digits28Params, DigitsParams

# Two rare classes (3 and 8), eight common ones: ~490 files each, ~72 for a rare one.
KEEP = (0.85, 0.85, 0.85, 0.1, 0.85, 0.85, 0.85, 0.85, 0.1, 0.85)
RARE = frozenset(str(digit) for digit, kept in enumerate(KEEP) if kept < 0.5)
COPIES = 4
# Stroke colours of the RGB pictures; each keeps a luma >= 0.5, so grayscale reads the strokes.
COLOURS = ((255, 200, 40), (120, 255, 120), (255, 120, 255), (90, 220, 255), (255, 160, 120))
N_TRUNCATED, N_EMPTY, N_TEXT, N_JPEG_AS_PNG, N_PNG_AS_JPG, N_SIDEWAYS = 6, 4, 3, 5, 3, 3
ROTATED_90_CW = 6  # EXIF orientation: the stored picture must be turned 90 degrees clockwise


def _picture(pixels: np.ndarray, rng: np.random.Generator):
    """One digit as a Pillow picture: grey or coloured strokes, at 28 px or resized."""
    from PIL import Image

    image = Image.fromarray(pixels.astype(np.uint8), "L")
    if rng.random() < 0.3:
        colour = np.array(COLOURS[rng.integers(len(COLOURS))], np.float64) / 255.0
        rgb = np.asarray(image, np.float64)[..., None] * colour
        image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    draw = rng.random()
    if draw < 0.15:
        image = image.resize((56, 56), Image.Resampling.BILINEAR)
    elif draw < 0.25:
        image = image.resize((84, 84), Image.Resampling.BILINEAR)
    elif draw < 0.3:
        image = image.resize((20, 20), Image.Resampling.BILINEAR)
    return image


def _encoded(image, fmt: str, exif: bytes | None = None) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, fmt, quality=92, **({"exif": exif} if exif else {}))
    else:
        image.save(out, fmt)
    return out.getvalue()


def write(root: Path, seed: int = 0, copies: int = COPIES) -> dict:
    """Write the folder under `root` and return the manifest of injected faults
    (`copies` jittered copies per digit: 4 gives ~5,000 files, 1 ~1,260)."""
    from PIL import Image

    from tasks.data.sources import load_digits28

    data = load_digits28(DigitsParams(KEEP), Digits28Params(copies, 10.0, 0.1, 2.0), seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.labels))
    faults: dict[str, list[str]] = {
        "truncated": [],
        "empty": [],
        "not_a_picture": [],
        "jpeg_named_png": [],
        "png_named_jpg": [],
        "sideways_exif": [],
        "filed_under_two_classes": [],
    }
    written: list[tuple[str, str]] = []  # (relative name, class)
    for n, i in enumerate(order):
        cls = data.classes[data.labels[i]]
        image = _picture(data.images[i], rng)
        fmt, ext = ("JPEG", "jpg") if rng.random() < 0.4 else ("PNG", "png")
        name = f"{cls}/{n:05d}.{ext}"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_encoded(image, fmt))
        written.append((name, cls))
    common = [(name, cls) for name, cls in written if cls not in RARE]
    picks = iter(rng.permutation(len(common)))

    def victim() -> tuple[Path, str, str]:
        name, cls = common[next(picks)]
        return root / name, name, cls

    for _ in range(N_TRUNCATED):
        path, name, _ = victim()
        data_bytes = path.read_bytes()
        path.write_bytes(data_bytes[: len(data_bytes) // 2])
        faults["truncated"].append(name)
    for _ in range(N_EMPTY):
        path, name, _ = victim()
        path.write_bytes(b"")
        faults["empty"].append(name)
    for _ in range(N_TEXT):
        path, name, cls = victim()
        path.unlink()
        text = path.with_suffix(".jpg")
        text.write_text("<html><body>404 Not Found</body></html>\n")
        faults["not_a_picture"].append(f"{cls}/{text.name}")
    for kind, fmt, ext in (("jpeg_named_png", "JPEG", ".png"), ("png_named_jpg", "PNG", ".jpg")):
        for _ in range(N_JPEG_AS_PNG if fmt == "JPEG" else N_PNG_AS_JPG):
            path, _, cls = victim()
            with Image.open(path) as image:
                encoded = _encoded(image.copy(), fmt)
            path.unlink()
            renamed = path.with_suffix(ext)
            renamed.write_bytes(encoded)
            faults[kind].append(f"{cls}/{renamed.name}")
    for _ in range(N_SIDEWAYS):
        # Stored turned a quarter anticlockwise, tagged to be shown turned clockwise: upright once oriented.
        path, _, cls = victim()
        with Image.open(path) as image:
            upright = image.convert("RGB").resize((56, 84), Image.Resampling.BILINEAR)
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = ROTATED_90_CW
        path.unlink()
        photo = path.with_name(path.stem + "_photo.jpg")
        photo.write_bytes(_encoded(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif.tobytes()))
        faults["sideways_exif"].append(f"{cls}/{photo.name}")
    # The same picture under a second class: a label conflict.
    path, name, cls = victim()
    other = next(c for c in sorted({c for _, c in common}) if c != cls)
    copy = root / other / f"copy_of_{path.name}"
    copy.write_bytes(path.read_bytes())
    faults["filed_under_two_classes"] += [name, f"{other}/{copy.name}"]
    per_class = Counter(p.parent.name for p in root.rglob("*") if p.is_file())
    return {
        "files": sum(per_class.values()),
        "per_class": dict(sorted(per_class.items())),
        "seed": seed,
        "faults": faults,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the class folders (must not exist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copies", type=int, default=COPIES, help="jittered copies per digit (4: ~5,000 files)")
    args = parser.parse_args()
    if args.folder.exists():
        parser.error(f"{args.folder} exists; name a new folder")
    manifest = write(args.folder, args.seed, args.copies)
    out = args.folder.with_name(args.folder.name + ".faults.json")
    out.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{manifest['files']} files in {args.folder}; faults in {out}")


if __name__ == "__main__":
    main()
