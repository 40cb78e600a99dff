"""What a run leaves for people and for other tools, read from a copy of the warm
digits project (tests/e2e/conftest.py): the report and model card in a real
browser, the champion under `mlflow models serve`, and a served prediction
traced back to its training data in a fresh clone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import REPO, git

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(digits_project: Path) -> Path:
    return digits_project


def test_run_report_and_model_card_open_offline_in_chromium(project: Path, tmp_path: Path) -> None:
    """reports/index.html and the model card, as a user opens them after `make run`:
    they render with the champion's name, its macro-F1 and the Pareto plot, and
    the page requests nothing beyond its own file. A page that does load a
    remote image is caught, so the check is known to see requests."""
    import base64
    import json
    import re

    from browser import open_page

    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://cdn.example.com/x.png"></body></html>')
    assert open_page(control.as_uri(), tmp_path / "control").remote() == ["http://cdn.example.com/x.png"]

    selection = json.loads((project / "reports/selection.json").read_text())
    champion = selection["champion"]
    quality = f"{selection['candidates'][champion]['quality']:.4f}"
    report = open_page((project / "reports/index.html").as_uri(), tmp_path / "report")
    assert report.remote() == [], report.requests
    assert re.search(rf'id="champion-name">{re.escape(champion)}<', report.dom)
    assert re.search(rf'id="champion-quality">{quality}<', report.dom)
    pareto = re.search(r'<img alt="Pareto: latency against quality" src="data:image/png;base64,([^"]+)"', report.dom)
    assert pareto and base64.b64decode(pareto.group(1)) == (project / "reports/pareto.png").read_bytes()
    assert "Model card: distillery-digits version" in report.dom
    assert len(report.screenshot) > 20_000  # drawn, not a blank page

    card = open_page((project / "reports/model_card.md").as_uri(), tmp_path / "card")
    assert card.remote() == [], card.requests
    assert f"({champion})" in card.dom and f"macro-F1 {quality}" in card.dom
    for section in (
        "Intended use",
        "Training data",
        "Evaluation data",
        "Metrics",
        "Compression history",
        "Limitations",
        "Lineage",
    ):
        assert f"## {section}" in card.dom

    # GX's Data Docs, rewritten to need no CDN: the index lists the validation page, which names the
    # project's own expectations in words.
    docs = open_page((project / "reports/data_docs/index.html").as_uri(), tmp_path / "docs")
    assert docs.remote() == [], docs.requests
    validations = re.findall(r'href="(validations/[^"]+\.html)"', docs.dom)
    assert validations, docs.dom[-2000:]
    page = open_page((project / "reports/data_docs" / validations[0]).as_uri(), tmp_path / "validation")
    assert page.remote() == [], page.requests
    assert "every class of" in page.dom and "must have at least" in page.dom and "(**" not in page.dom

    # `make plots`: DVC's plots page, Vega inlined; ROC and PR draw one line per class.
    from flows.report import plots_page

    page = plots_page(project, ["show"])
    assert '"color": {"field": "class"' in page.read_text()  # .dvc/plots/per_class.json (vegaEmbed replaces it)
    plots = open_page(page.as_uri(), tmp_path / "plots", settle_s=3)
    assert plots.remote() == [], plots.requests
    assert plots.dom.count('class="marks"') >= 3, plots.dom[-2000:]  # Vega drew (SVG or canvas marks)


def test_mlflow_models_serve_answers_the_readme_pixel_row(project: Path) -> None:
    """The serving docs' pixel row (docs/examples/predict_digits.json), against `mlflow models serve` on
    the registry's champion, and the same class as the ONNX file gives."""
    import json
    import time

    import httpx
    from serve.serve_helpers import free_port

    from deploy.model import build_model
    from deploy.protocol import parse_predict, predictions

    body = json.loads((REPO / "docs/examples/predict_digits.json").read_text())
    port = free_port()
    # As the docs say to run it: mlflow starts `uvicorn` by name, so the venv's bin goes first on PATH.
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/distillery-digits@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 180 s"
            time.sleep(1)
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": body["rows"]}, timeout=30)
        assert answer.status_code == 200, answer.text
        served = answer.json()["predictions"]
        champion = project / "models/champion.onnx"
        model = build_model(
            champion.read_bytes(), name="x", version="1", source="test", threads=1, folder=champion.parent
        )
        expected = predictions(model, model.run(parse_predict(body, model, 10).x)[model.answer])
        assert [p["class"] for p in served] == [e["class"] for e in expected]
        bad = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": [[0, 1, 2]]}, timeout=30)
        assert bad.status_code == 400, bad.text  # a short row is the client's mistake, said as such
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_served_prediction_traces_back_to_the_data_that_trained_it(project: Path, tmp_path: Path) -> None:
    """Serve one prediction from the registry, trace its request id, run the
    printed checkout in a fresh clone (data from a DVC remote), and find the
    training split whose hash the version records."""
    import hashlib
    import json
    import re

    from mlflow import MlflowClient
    from serve.serve_helpers import Server

    uri = f"sqlite:///{project / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # What the docs say to do after a run, with a DVC remote a colleague's clone can pull from.
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "-f", "shared", str(tmp_path / "remote")],
        cwd=project,
        check=True,
        capture_output=True,
    )
    subprocess.run([sys.executable, "-m", "dvc", "push"], cwd=project, check=True, capture_output=True, env=env)
    git(project, "add", "dvc.lock", ".dvc/config")
    git(project, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "the run's data")

    server = Server(tmp_path, "models:/distillery-digits@champion", tracking_uri=uri).wait_ready()
    try:
        body = json.loads((REPO / "docs/examples/predict_digits.json").read_text())
        answer = server.predict(body["rows"], headers={"X-Request-ID": "trace-me-1"})
        assert answer.status_code == 200, answer.text
    finally:
        server.stop()
    served = answer.json()
    done = subprocess.run(
        [sys.executable, "-m", "tasks.trace", "trace-me-1", "--log-dir", str(server.log_dir)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    version = MlflowClient(tracking_uri=uri).get_model_version("distillery-digits", served["model_version"])
    assert f"answered by distillery-digits version {served['model_version']}" in out
    assert f"row 0: {served['predictions'][0]['class']}" in out and version.run_id in out
    assert f"git commit {version.tags['git_commit']}" in out
    assert f"data/processed: {version.tags['dvc/data/processed']}" in out
    (command,) = re.findall(r"^  (git checkout .*)$", out, re.M)
    assert command.endswith("&& dvc pull"), out  # a remote is set up: the clone pulls the data

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    done = subprocess.run(
        ["bash", "-c", command.replace("dvc ", f"{sys.executable} -m dvc ")],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    md5 = lambda path: hashlib.md5(path.read_bytes()).hexdigest()  # noqa: E731
    assert md5(clone / "data/processed/train.npz") == md5(project / "data/processed/train.npz")
    assert json.loads((clone / "data/processed/meta.json").read_text())["data_hash"] == version.tags["data_hash"]
