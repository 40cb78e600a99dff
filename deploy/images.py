"""Pictures sent as files: an image body, a multipart/form-data upload, or a
v2 BYTES input, decoded into the model's pixels by the very function training
decoded its folder with (tasks.contracts.image.decode), under the policy the
model carries (ArtifactMetadata.preprocessing.image).

Only a model trained on a folder of pictures (`data.source: images`) carries
a policy. Any other model is refused pictures (415 on /predict, 422 on the v2
datatype): an image model made from the bundled digits was trained on pixel
arrays in its own units (0..16), and a guessed resize/convert of a PNG into
them would be a second preprocessing, never the one training used.

Every refusal names the picture at fault: `body`, `parts[1]` (the form field
and file name in the message), or `inputs[0].data[2]`.
"""

from __future__ import annotations

import email.message
import email.parser
import logging
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from deploy.protocol import Picture, RequestError, invalid
from tasks.contracts.image import ImagePolicy, UnreadableImage, as_input, decode

log = logging.getLogger("deploy.images")

# The picture formats the images source reads (tasks/data/images.py), by media type; octet-stream is sniffed.
IMAGE_MEDIA = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff")
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/form-data"
PICTURE_MEDIA = (*IMAGE_MEDIA, OCTET_STREAM, MULTIPART)  # what /predict takes besides JSON
BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")  # RFC 2046's bchars


def policy_of(model: Any) -> ImagePolicy:
    """The model's decoding policy; a 415 saying what to send instead when it has none."""
    policy = model.metadata.preprocessing.image
    if policy is not None:
        return policy
    if model.kind == "table":
        takes = 'table rows as JSON: {"rows": [{column: value}, ...]}'
    else:
        takes = (
            f'pixel values as JSON: {{"rows": [...]}}, each row shaped {list(model.signature.input_shape)} in '
            "the model's raw units; it was not trained on a folder of pictures, so it has no decoding policy "
            "(preprocessing.image) to read a picture file with"
        )
    raise RequestError(415, f"this model takes {takes}", "Content-Type", "no_image_policy")


def pictures_of(media: str, content_type: bytes, body: bytes, max_rows: int) -> list[Picture]:
    """The pictures of a /predict body: the body itself, or each part of a multipart one."""
    if media != MULTIPART:
        return [Picture("body", body)]
    return multipart_parts(content_type, body, max_rows)


def _header_params(block: bytes) -> email.message.Message:
    """Headers read by the standard library; their bytes as UTF-8 (what browsers send a file
    name in), anything else replaced, so that no name an error quotes can fail to be JSON."""
    return email.parser.HeaderParser().parsestr(block.decode("utf-8", "replace") + "\r\n\r\n")


def multipart_parts(content_type: bytes, body: bytes, max_rows: int) -> list[Picture]:
    """The parts of a multipart/form-data body (RFC 7578), in order, each a
    picture. Split on the boundary by hand (bytes.find: exact for any bytes,
    and fast); each part's headers are read by the standard library."""
    boundary = _header_params(b"Content-Type: " + content_type).get_boundary()
    if not boundary or not BOUNDARY.fullmatch(boundary):
        raise RequestError(
            400,
            f"{MULTIPART} needs its boundary: Content-Type: {MULTIPART}; boundary=... (1 to 70 letters, digits "
            f"or '()+_,-./:=? characters, RFC 2046), got {boundary!r}",
            "Content-Type",
        )
    delimiter = b"--" + boundary.encode()
    if body.startswith(delimiter):
        pos = 0
    else:  # a preamble before the first delimiter is allowed, and ignored
        pos = body.find(b"\r\n" + delimiter)
        if pos < 0:
            raise RequestError(400, f"the body has no part: the boundary {boundary!r} is not in it", "body")
        pos += 2
    parts: list[Picture] = []
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):  # the close delimiter
            break
        where = f"parts[{len(parts)}]"
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise RequestError(400, f"{where}: the boundary line is malformed or cut short", where)
        head_end = body.find(b"\r\n\r\n", line_end)
        if head_end < 0:
            raise RequestError(400, f"{where}: its headers do not end (no blank line): the body is cut short", where)
        start = head_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise RequestError(400, f"{where}: no boundary after it: the body is cut short", where)
        if len(parts) == max_rows:
            raise invalid(
                f"more than {max_rows} parts; the limit is {max_rows} rows per request (DISTILLERY_SERVE_MAX_ROWS)",
                "parts",
            )
        headers = _header_params(body[line_end + 2 : head_end])
        name = headers.get_param("name", header="content-disposition")
        filename = headers.get_filename()
        named = ", ".join(
            f'{what} "{value}"' for what, value in (("field", name), ("file", filename)) if isinstance(value, str)
        )
        parts.append(Picture(where, body[start:end], f"{where} ({named})" if named else where))
        pos = end + 2
    if not parts:
        raise invalid(f"the {MULTIPART} body has no part: send one file per row", "parts")
    return parts


@dataclass
class Decoded:
    """The pictures of a request as the model's input, and what each was as stored."""

    x: np.ndarray  # N x C x H x W float32, raw pixel units (0..255)
    stored: list[tuple[int, int, int, str]]  # per picture: tasks.contracts.predlog.PICTURE


def decode_pictures(pictures: Sequence[Picture], policy: ImagePolicy, max_pixels: int) -> Decoded:
    """Each picture decoded with `policy`, as training decoded its files. The
    pictures of one request may hold `max_pixels` pixels together, as stored
    (a decompression bomb, or many of them, is a 413 naming the picture); a
    picture that does not decode is a 422 naming it."""
    from PIL import Image

    bombs = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    arrays, stored, left = [], [], max_pixels
    for picture in pictures:
        try:
            got = decode(picture.data, policy, max_pixels=left)
        except UnreadableImage as err:
            if isinstance(err.__cause__, bombs):
                raise RequestError(
                    413,
                    f"{picture.where}: {err}; a request's pictures may hold {max_pixels} pixels together, as "
                    "stored (DISTILLERY_SERVE_MAX_IMAGE_PIXELS)",
                    picture.field,
                    "too_many_pixels",
                ) from None
            raise invalid(f"{picture.where} is not a picture the model can read: {err}", picture.field) from None
        except Exception as err:  # the bytes are the client's: whatever else the decoder trips on is about them
            log.warning("the decoder failed on %s (%s: %s)", picture.where, type(err).__name__, err)
            raise invalid(
                f"{picture.where} is not a picture the model can read: {type(err).__name__}: {err}", picture.field
            ) from None
        left -= got.width * got.height
        arrays.append(got.pixels)
        stored.append((got.width, got.height, got.channels, got.format))
    return Decoded(as_input(np.stack(arrays)), stored)
