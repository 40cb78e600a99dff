"""How a picture file becomes the model's pixels: the resize/convert policy
and the one function that applies it.

Ingest decodes a folder of pictures with it, the policy is recorded in the
processed meta and in the ONNX file's metadata (`preprocessing.image`), and a
server that takes image bytes replays it with the same function, so a served
picture is read exactly as training read the files.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np

Fit = Literal["pad", "crop", "stretch"]
# More pixels than this is a decompression bomb, refused (Pillow's own default, where it warns).
DEFAULT_MAX_PIXELS = 89_478_485
WHITE = 255  # RGBA and LA pictures are composited on white: a transparent background reads as paper


@dataclass(frozen=True)
class ImagePolicy:
    """Every picture becomes size x size pixels with `channels` channels, uint8."""

    size: int = 28  # side in pixels of the square the model takes
    channels: Literal[1, 3] = 1  # 1 = grayscale (ITU-R 601-2 luma), 3 = RGB
    fit: Fit = "pad"  # pad: whole picture, centred, padded with black; crop: centre square; stretch: ignore aspect

    def __post_init__(self) -> None:
        if self.size < 4:
            raise ValueError("size must be >= 4 pixels")
        if self.channels not in (1, 3):
            raise ValueError("channels must be 1 or 3")
        if self.fit not in ("pad", "crop", "stretch"):
            raise ValueError("fit must be pad, crop or stretch")

    @property
    def shape(self) -> tuple[int, ...]:
        """One decoded picture's array shape: H, W (1 channel) or H, W, C."""
        return (self.size, self.size) if self.channels == 1 else (self.size, self.size, self.channels)


@dataclass(frozen=True)
class Decoded:
    """A picture as the policy made it, and what it was before (for the gate's checks)."""

    pixels: np.ndarray  # policy.shape, uint8
    format: str  # Pillow's name for the file format (PNG, JPEG, ...)
    width: int  # as stored, after EXIF orientation
    height: int
    mode: str  # Pillow mode as stored (L, RGB, RGBA, P, ...)
    channels: int  # 1 for grayscale modes, 3 for colour (alpha not counted)
    orientation: int = 1  # EXIF orientation tag as stored (1 = upright; 2..8 turned or mirrored, and applied)


class UnreadableImage(Exception):
    """The bytes are not a picture this policy can read; the message is the decoder's reason."""


EXIF_ORIENTATION = 0x0112  # the EXIF tag exif_transpose applies
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def to_array(image, policy: ImagePolicy) -> np.ndarray:  # image: PIL.Image.Image
    """orient -> convert -> resize an opened picture into policy.shape uint8 pixels."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image) or image
    image = _flatten(image)
    image = image.convert("L" if policy.channels == 1 else "RGB")
    side = policy.size
    if policy.fit == "stretch":
        image = image.resize((side, side), Image.Resampling.BILINEAR)
    elif policy.fit == "crop":
        image = ImageOps.fit(image, (side, side), Image.Resampling.BILINEAR)
    else:
        # Black padding: the bundled sources draw light strokes on black, and pad keeps every pixel.
        image = ImageOps.pad(image, (side, side), Image.Resampling.BILINEAR, color=0)
    return np.asarray(image, dtype=np.uint8).reshape(policy.shape)


def _flatten(image):
    """Alpha is composited on white (WHITE), not dropped: a dropped alpha would
    reveal whatever colour the transparent pixels happen to hold."""
    from PIL import Image

    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (WHITE, WHITE, WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float grayscale: scale to 0..255 by the picture's own range.
        values = np.asarray(image, dtype=np.float64)
        top = values.max() if values.size and values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8), "L")
    return image


def decode(
    source: Union[str, Path, bytes], policy: ImagePolicy, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS
) -> Decoded:
    """Decode one file or byte string (first frame of an animation) with the policy.
    Raises UnreadableImage with the decoder's reason for a file that is empty,
    truncated, not a picture, or bigger than `max_pixels` (a decompression bomb)."""
    from PIL import Image, ImageOps

    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if not data:
            raise UnreadableImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                # The header gives the size: refuse a bomb before decoding a pixel. Checked here, not by
                # setting Image.MAX_IMAGE_PIXELS, a process-wide global a threaded server would share.
                if max_pixels is not None and image.width * image.height > max_pixels:
                    raise Image.DecompressionBombError(
                        f"{image.width}x{image.height} = {image.width * image.height} pixels, over the limit of {max_pixels}"
                    )
                image.seek(0)  # GIF, WebP, TIFF: the first frame
                image.load()
                oriented = ImageOps.exif_transpose(image) or image
                mode = image.mode
                decoded = Decoded(
                    pixels=to_array(image, policy),
                    format=str(image.format or "unknown"),
                    width=int(oriented.width),
                    height=int(oriented.height),
                    mode=mode,
                    channels=1 if mode in GRAY_MODES else 3,
                    orientation=int(image.getexif().get(EXIF_ORIENTATION, 1) or 1),
                )
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnreadableImage(f"decompression bomb: {err}") from err
    except Image.UnidentifiedImageError as err:
        # Pillow's own message names the in-memory buffer's address: the reason must be the same every run.
        raise UnreadableImage("not a picture: its bytes match no format Pillow reads") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # truncated or corrupt data
        raise UnreadableImage(f"{type(err).__name__}: {err}") from err
    return decoded


def as_input(images: np.ndarray) -> np.ndarray:
    """Decoded pictures (N x H x W, or N x H x W x C) as a model's input, N x C x H x W
    float32 in raw 0..255 units: one layout for training (tasks/preprocess.py), the
    label-error check and a server decoding picture files."""
    x = images[:, None, :, :] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)
