"""Picture files in: an image body, a multipart/form-data upload and a v2 BYTES
input, against a real server whose model carries a decoding policy
(preprocessing.image, as a model of `data.source: images` does).

Each answer must be the answer to the pixels tasks.contracts.image.decode (the
function training decoded its folder with) makes of the same bytes, sent as
JSON rows; each bad picture a 4xx whose body names it; a model without a
policy a 415 saying what it takes."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from typing import Any

import httpx
import numpy as np
import pytest

from tasks.contracts.image import decode
from tasks.onnx.runtime import read_metadata

from .serve_helpers import image_model, picture_file, picture_policy, read_log, replace_file, wait_until

MAX_ROWS, MAX_BODY, MAX_PIXELS = 4, 60_000, 50_000
POLICY = picture_policy()  # the "picture" model's: 16 x 16 RGB, padded
INFER = "/v2/models/distillery/infer"
FORMATS = [
    ("PNG", "image/png"),
    ("JPEG", "image/jpeg"),
    ("WEBP", "image/webp"),
    ("GIF", "image/gif"),
    ("BMP", "image/bmp"),
    ("TIFF", "image/tiff"),
    ("PNG", "application/octet-stream"),  # the format is read from the bytes
    ("WEBP", "application/octet-stream"),
]


@pytest.fixture(scope="module")
def server(serve_module, models):
    return serve_module(
        models["picture"],
        max_rows=MAX_ROWS,
        max_body_bytes=MAX_BODY,
        max_image_pixels=MAX_PIXELS,
        log_flush_interval_s=0.1,
    )


def blank(width: int, height: int) -> bytes:
    """A black grey PNG: many pixels in a few hundred bytes (how a decompression bomb looks)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, "PNG")
    return out.getvalue()


def json_rows(files: list[bytes], policy=POLICY) -> list:
    """The JSON /predict rows of `files`: decoded by training's function, channels first."""
    rows = []
    for data in files:
        pixels = decode(data, policy).pixels
        rows.append((pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)).tolist())
    return rows


def multipart(*files: tuple[str, bytes]) -> dict:
    return {"files": [("file", (name, data, "application/octet-stream")) for name, data in files]}


def predictions(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def probabilities(answers: list[dict]) -> np.ndarray:
    return np.array([list(a["probabilities"].values()) for a in answers])


def assert_same_answers(got: list[dict], want: list[dict]) -> None:
    assert [a["class"] for a in got] == [a["class"] for a in want]
    np.testing.assert_allclose(probabilities(got), probabilities(want), rtol=1e-6, atol=1e-7)


def output(r: httpx.Response, name: str = "probabilities") -> np.ndarray:
    assert r.status_code == 200, r.text
    found = next(o for o in r.json()["outputs"] if o["name"] == name)
    return np.asarray(found["data"], np.float32).reshape(found["shape"])


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("fmt, media", FORMATS)
def test_a_picture_body_is_answered_as_its_decoded_pixels_sent_as_json(server, fmt, media):
    data = picture_file(seed=1, fmt=fmt)
    got = predictions(server.client.post("/predict", content=data, headers={"Content-Type": media}))
    assert_same_answers(got, predictions(server.predict(json_rows([data]))))


def test_a_picture_of_the_policys_size_is_answered_as_its_own_pixels(server):
    """No resize to hide behind: the server's layout (channels first, raw 0..255) is the JSON rows'."""
    from PIL import Image

    pixels = np.random.default_rng(8).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    got = predictions(server.client.post("/predict", content=out.getvalue(), headers={"Content-Type": "image/png"}))
    assert_same_answers(got, predictions(server.predict([pixels.transpose(2, 0, 1).tolist()])))


def test_multipart_answers_one_row_per_part_in_the_parts_order(server):
    a, b = picture_file(seed=2), picture_file(seed=3, size=(9, 30), fmt="JPEG")
    for files in ([a, b], [b, a]):
        got = predictions(server.client.post("/predict", **multipart(*((f"{i}.img", f) for i, f in enumerate(files)))))
        assert_same_answers(got, predictions(server.predict(json_rows(files))))
    assert not np.allclose(*probabilities(got)), "two different pictures: two different answers, so order shows"


def test_v2_bytes_in_json_as_base64_and_in_the_binary_extension(server):
    import tritonclient.http as triton

    files = [picture_file(seed=4), picture_file(seed=5, size=(31, 7), mode="L", fmt="JPEG")]
    x = np.asarray(json_rows(files), np.float32)
    want = output(server.infer(x))
    encoded = [base64.b64encode(f).decode() for f in files]
    body = {"inputs": [{"name": "pixels", "shape": [2], "datatype": "BYTES", "data": encoded}]}
    np.testing.assert_allclose(output(server.client.post(INFER, json=body)), want, rtol=1e-6, atol=1e-7)
    # Triton's own client: the pictures length-prefixed in the binary part, and base64 text in JSON.
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        for binary, elements in ((True, files), (False, [e.encode() for e in encoded])):
            tensor = triton.InferInput("pixels", [2], "BYTES")
            tensor.set_data_from_numpy(np.array(elements, dtype=object), binary_data=binary)
            answer = client.infer("distillery", [tensor], outputs=[triton.InferRequestedOutput("probabilities")])
            np.testing.assert_allclose(answer.as_numpy("probabilities"), want, rtol=1e-6, atol=1e-7)
    finally:
        client.close()


def test_a_one_channel_policy_reads_colour_and_alpha_as_training_did(serve_module, tmp_path_factory):
    """A grey 8 x 8 model, cropping: RGBA (composited on white), palette and grey pictures."""
    policy = picture_policy(size=8, channels=1, fit="crop")
    model = image_model(tmp_path_factory.mktemp("grey") / "grey.onnx", seed=9, policy=policy)
    server = serve_module(model)
    meta = server.client.get("/v2/models/distillery").json()
    assert meta["parameters"]["image"] == {"size": 8, "channels": 1, "fit": "crop"}
    assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
    files = [
        picture_file(seed=10, size=(13, 21), mode="RGBA"),
        picture_file(seed=11, mode="P", fmt="GIF"),
        picture_file(seed=12, size=(8, 8), mode="L"),
    ]
    got = predictions(server.client.post("/predict", **multipart(*(("f", f) for f in files))))
    assert_same_answers(got, predictions(server.predict(json_rows(files, policy))))


def test_every_picture_type_the_document_lists_is_answered_and_no_other(server):
    content = server.client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"]
    pictures = sorted(set(content) - {"application/json", "multipart/form-data"})
    assert "image/png" in pictures and "application/octet-stream" in pictures
    data = picture_file(seed=13)
    for media in pictures:
        r = server.client.post("/predict", content=data, headers={"Content-Type": media})
        assert r.status_code == 200, (media, r.text)
    assert "multipart/form-data" in content
    for media in ("image/svg+xml", "image/x-icon", "text/plain"):
        r = server.client.post("/predict", content=data, headers={"Content-Type": media})
        assert r.status_code == 415 and r.json()["field"] == "Content-Type", (media, r.text)
        assert "image/png" in r.json()["error"] and "multipart/form-data" in r.json()["error"]


# --------------------------------------------------------------------------- refusals


def _png_body(data: bytes) -> dict:
    return {"content": data, "headers": {"Content-Type": "image/png"}}


def _bytes_input(*elements: Any, shape: list[int] | None = None, name: str = "pixels") -> dict:
    tensor = {"name": name, "shape": shape or [len(elements)], "datatype": "BYTES", "data": list(elements)}
    return {"json": {"inputs": [tensor]}}


def _binary_input(part: bytes, rows: int) -> dict:
    header = json.dumps(
        {
            "inputs": [
                {"name": "pixels", "shape": [rows], "datatype": "BYTES", "parameters": {"binary_data_size": len(part)}}
            ]
        }
    ).encode()
    return {
        "content": header + part,
        "headers": {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GOOD = picture_file(seed=14)
BOMB = blank(1000, 1000)  # 1,000,000 pixels in about a kilobyte
CUT_MULTIPART = httpx.Request("POST", "http://x/", files=[("file", ("a.png", GOOD, "image/png"))])
CUT_BODY = CUT_MULTIPART.read()[:-30]
REFUSALS = {
    # name: (path, request, status, field, words the error says)
    "bytes over the body limit": (
        "/predict",
        _png_body(GOOD + bytes(MAX_BODY)),
        413,
        "body",
        "DISTILLERY_SERVE_MAX_BODY_BYTES",
    ),
    "a bomb as the body": ("/predict", _png_body(BOMB), 413, "body", "1000x1000"),
    "a bomb in the second part": (
        "/predict",
        multipart(("ok.png", GOOD), ("huge.png", BOMB)),
        413,
        "parts[1]",
        'file "huge.png"',
    ),
    "pictures over the pixel budget together": (
        "/predict",
        multipart(*((f"{i}.png", blank(150, 150)) for i in range(3))),  # 22,500 pixels each, 50,000 in all
        413,
        "parts[2]",
        "DISTILLERY_SERVE_MAX_IMAGE_PIXELS",
    ),
    "a truncated PNG": ("/predict", _png_body(GOOD[: len(GOOD) // 2]), 422, "body", "truncated"),
    "zero bytes": ("/predict", _png_body(b""), 422, "body", "empty"),
    "text sent as image/png": ("/predict", _png_body(b"hello, I am not a picture"), 422, "body", "not a picture"),
    "a truncated part": ("/predict", multipart(("ok.png", GOOD), ("cut.png", GOOD[:40])), 422, "parts[1]", "cut.png"),
    "more parts than rows": ("/predict", multipart(*[("ok.png", GOOD)] * (MAX_ROWS + 1)), 422, "parts", "MAX_ROWS"),
    "multipart without its boundary": (
        "/predict",
        {"content": b"--x\r\n\r\nabc\r\n--x--", "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "Content-Type",
        "boundary",
    ),
    "a boundary of bytes that are not text": (
        "/predict",
        {
            "content": b"--\xff\r\n\r\nabc\r\n--\xff--",
            "headers": {"Content-Type": b"multipart/form-data; boundary=\xff"},
        },
        400,
        "Content-Type",
        "RFC 2046",
    ),
    "a cut part whose file name is UTF-8, and one that is not": (
        "/predict",
        {
            "content": b'--x\r\nContent-Disposition: form-data; name="f"; filename="caf\xc3\xa9.png"\r\n\r\n'
            + GOOD[:40]
            + b'\r\n--x\r\nContent-Disposition: form-data; name="f"; filename="\xff.png"\r\n\r\n'
            + GOOD[:40]
            + b"\r\n--x--\r\n",
            "headers": {"Content-Type": "multipart/form-data; boundary=x"},
        },
        422,
        "parts[0]",
        'file "café.png"',
    ),
    "a multipart body cut short": (
        "/predict",
        {"content": CUT_BODY, "headers": {"Content-Type": CUT_MULTIPART.headers["Content-Type"]}},
        400,
        "parts[0]",
        "cut short",
    ),
    "v2: not base64": (INFER, _bytes_input(_b64(GOOD), "not base64!"), 422, "inputs[0].data[1]", "base64"),
    "v2: a number for a picture": (INFER, _bytes_input(7), 422, "inputs[0].data[0]", "base64 string"),
    "v2: a truncated picture": (
        INFER,
        _bytes_input(_b64(GOOD[: len(GOOD) // 2])),
        422,
        "inputs[0].data[0]",
        "truncated",
    ),
    "v2: a bomb": (INFER, _bytes_input(_b64(GOOD), _b64(BOMB)), 413, "inputs[0].data[1]", "pixels"),
    "v2: pictures shaped as pixels": (
        INFER,
        _bytes_input(_b64(GOOD), shape=[1, 3, 16, 16]),
        422,
        "inputs[0].shape",
        "one picture file a row",
    ),
    "v2: fewer elements than the shape": (
        INFER,
        _bytes_input(_b64(GOOD), shape=[2]),
        422,
        "inputs[0].data",
        "2 base64",
    ),
    "v2 binary: a length past the end": (
        INFER,
        _binary_input(len(GOOD).to_bytes(4, "little") + GOOD + (999).to_bytes(4, "little") + b"abc", 2),
        422,
        "inputs[0].data[1]",
        "999 bytes",
    ),
    "v2 binary: bytes after the pictures": (
        INFER,
        _binary_input(len(GOOD).to_bytes(4, "little") + GOOD + b"tail", 1),
        422,
        "inputs[0].data",
        "4 bytes after",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bad_picture_is_refused_naming_it(server, case):
    path, request, status, field, words = REFUSALS[case]
    r = server.client.post(path, **request)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field and words in body["error"], body
    assert server.client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("kind", ["table", "image"])
def test_a_model_without_a_policy_says_it_takes_json(serve_module, models, kind):
    """A table model, and an image model trained on pixel arrays (the bundled digits: no preprocessing.image)."""
    server = serve_module(models[kind])
    says = "table rows" if kind == "table" else "no decoding policy"
    for request in (_png_body(GOOD), multipart(("ok.png", GOOD))):
        r = server.client.post("/predict", **request)
        assert r.status_code == 415 and r.json()["field"] == "Content-Type" and says in r.json()["error"], r.text
    r = server.client.post(INFER, **_bytes_input(_b64(GOOD), name="features" if kind == "table" else "pixels"))
    assert r.status_code == 422 and r.json()["field"] == "inputs[0].datatype", r.text
    assert "BYTES" in r.json()["error"]
    assert "image" not in server.client.get("/v2/models/distillery").json()["parameters"]


# --------------------------------------------------------------------------- the prediction log


def test_the_log_records_each_pictures_size_channels_and_format_with_its_pixel_summary(server):
    files = [picture_file(seed=15, size=(30, 20)), picture_file(seed=16, size=(12, 9), mode="L", fmt="JPEG")]
    ids = {"pictures": "log-pictures", "infer": "log-bytes", "pixels": "log-pixels"}
    r = server.client.post(
        "/predict", headers={"X-Request-ID": ids["pictures"]}, **multipart(("a", files[0]), ("b", files[1]))
    )
    assert r.status_code == 200, r.text
    r = server.client.post(INFER, headers={"X-Request-ID": ids["infer"]}, **_bytes_input(*map(_b64, files)))
    assert r.status_code == 200, r.text
    assert server.predict(json_rows(files), headers={"X-Request-ID": ids["pixels"]}).status_code == 200

    def logged() -> dict[str, list[dict]]:
        by_id: dict[str, list[dict]] = {}
        for row in read_log(server.log_dir):
            if row["request_id"] in ids.values() and row["status"] == 200:
                by_id.setdefault(row["request_id"], []).append(row)
        return by_id

    wait_until(lambda: all(len(rows) == 2 for rows in logged().values()) and len(logged()) == 3, message="log rows")
    rows = {name: sorted(logged()[request_id], key=lambda row: row["row"]) for name, request_id in ids.items()}
    inputs = {name: [json.loads(row["inputs"]) for row in found] for name, found in rows.items()}
    stored = [(30, 20, 3, "PNG"), (12, 9, 1, "JPEG")]
    for name in ("pictures", "infer"):
        assert [(i["width"], i["height"], i["channels"], i["format"]) for i in inputs[name]] == stored
        for got, want in zip(inputs[name], inputs["pixels"]):  # the same pixels: the same summary
            assert got["mean"] == pytest.approx(want["mean"]) and (got["min"], got["max"]) == (want["min"], want["max"])
        assert [row["predicted"] for row in rows[name]] == [row["predicted"] for row in rows["pixels"]]
    assert all("width" not in i for i in inputs["pixels"])  # pixels sent as JSON have no file to describe


# --------------------------------------------------------------------------- reloads and start-up


def test_a_candidate_that_no_longer_takes_picture_files_is_refused(serve, models, tmp_path):
    path = tmp_path / "model.onnx"
    replace_file(path, models["picture"])
    server = serve(path)
    replace_file(path, image_model(tmp_path / "pixels_only.onnx", seed=4, input_shape=(3, 16, 16)))
    r = server.client.post("/v2/repository/models/distillery/load")
    assert r.status_code == 409 and "takes picture files and the candidate does not" in r.json()["error"], r.text
    r = server.client.post("/predict", content=GOOD, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text  # the served model keeps serving


def test_a_model_whose_policy_is_not_its_input_is_not_served(tmp_path):
    """A policy of 8 x 8 grey pixels on a model taking 16 x 16 RGB: refused at load, naming both."""
    from deploy.model import PathSource
    from tasks.core.errors import DistilleryError
    from tasks.onnx.export import set_metadata

    path = image_model(tmp_path / "mismatch.onnx", seed=4, policy=POLICY)
    meta = read_metadata(path)
    set_metadata(path, meta.replace(preprocessing=dataclasses.replace(meta.preprocessing, image=picture_policy(8, 1))))
    with pytest.raises(DistilleryError, match=r"1 x 8 x 8 pixels, but the input takes \[3, 16, 16\]"):
        PathSource(str(path), "distillery").load(threads=1)
