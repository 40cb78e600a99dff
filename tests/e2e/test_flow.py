"""The whole Prefect flow on tiny settings, in a temporary git + DVC copy of the repo."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from e2e_helpers import REPO, git, make_project

from tasks.contracts.onnx import IMAGE_INPUT, PROBABILITIES, TABLE_INPUT
from tasks.contracts.processed import read_meta
from tasks.core.provenance import sha256_file

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"))


def _run_flow(root: Path) -> list[dict]:
    from flows.pipeline import pipeline

    return pipeline(root=str(root))


def test_flow_end_to_end_then_skips_and_reruns_only_what_changed(project: Path, harness, monkeypatch) -> None:
    import mlflow
    import onnxruntime as ort
    from dvc.repo import Repo
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = _run_flow(project)
    stages = [r["stage"] for r in first]
    assert stages == [
        "ingest",
        "validate",
        "preprocess",
        "search",
        "train",
        "distill",
        "prune",
        "export",
        "evaluate",
        "select",
        "register",
    ]
    assert all(r["ran"] for r in first)

    # The champion is the fastest candidate (every precision competes; the budget is open here),
    # an ONNX that onnxruntime loads and that predicts.
    metrics = yaml.safe_load((project / "reports/selection.json").read_text())
    key = metrics["speed_key"]
    assert metrics["champion"] == min(metrics["candidates"], key=lambda n: metrics["candidates"][n][key])
    champion = project / "models/champion.onnx"
    assert champion.stat().st_size < (project / "models/onnx/teacher.fp32.onnx").stat().st_size
    with np.load(project / "data/processed/test.npz") as test:
        x = test["x"][:5]
    session = ort.InferenceSession(str(champion), providers=["CPUExecutionProvider"])
    probabilities = session.run([PROBABILITIES], {IMAGE_INPUT: x})[0]
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)

    # MLflow holds the registered version under the alias, tagged with its provenance.
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    version = client.get_model_version_by_alias("distillery-digits", "champion")
    assert version.tags["candidate"] == metrics["champion"]
    assert len(version.tags["git_commit"]) == 40
    data_meta = yaml.safe_load((project / "data/processed/meta.json").read_text())
    assert version.tags["data_hash"] == data_meta["data_hash"]
    assert version.description.startswith(f"# Model card: distillery-digits version {version.version}")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")  # restored after the test (conftest)
    info = mlflow.models.get_model_info(f"models:/distillery-digits/{version.version}")
    assert info.signature is not None and info.saved_input_example_info is not None

    # One MLflow run for the pipeline run, FINISHED, with every stage's run nested under it.
    experiment = client.get_experiment_by_name("distillery")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.stage = 'pipeline'")
    assert parent.info.status == "FINISHED" and parent.data.tags["stages_ran"] == ",".join(stages)
    nested = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    # search is disabled here; select only chooses among evaluate's figures, which evaluate tracked
    assert {r.data.tags["stage"] for r in nested} == set(stages) - {"search", "select"}
    assert all(r.data.tags.get("task") or r.data.tags["stage"] == "ingest" for r in nested)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"index.html", "model_card.md"}

    # DVC agrees nothing is stale but register, which always asks the registry; a second flow run skips
    # every other stage, and register finds the same file already registered: no new version.
    with contextlib.chdir(project), Repo(str(project)) as repo:  # DVC names stages relative to the cwd
        assert repo.status() == {"register": ["always changed"]}
    second = _run_flow(project)
    assert [r["stage"] for r in second if r["ran"]] == ["register"]
    assert [str(v.version) for v in client.search_model_versions("name='distillery-digits'")] == [str(version.version)]

    # Editing any module a stage imports makes exactly the stages that import it stale.
    assert stale_after_editing(project, "tasks/core/provenance.py") == set(stages)  # hash_arrays: every stage
    assert stale_after_editing(project, "tasks/core/paths.py") == set(stages)
    assert stale_after_editing(project, "tasks/ml/losses.py") == {
        "search",
        "train",
        "distill",
        "prune",
        "export",
        "register",
    }
    assert stale_after_editing(project, "tasks/evaluation/plots.py") == set(stages[3:])
    assert stale_after_editing(project, "tasks/onnx/quantize.py") == {"export", "evaluate", "select", "register"}

    # Changing an evaluate param reruns evaluate and what follows it, nothing before.
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["evaluate"]["latency_rounds"] = 3
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run_flow(project)
    assert [r["stage"] for r in third if r["ran"]] == ["evaluate", "select", "register"]
    # The same file wins again or another does: a new version only for another file.
    again = yaml.safe_load((project / "reports/selection.json").read_text())
    now = client.get_model_version_by_alias("distillery-digits", "champion")
    assert (now.version == version.version) == (again["champion"] == metrics["champion"])
    assert now.tags["sha256"] == sha256_file(project / "models/champion.onnx")


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


def stale_after_editing(project: Path, module: str) -> set[str]:
    """Append a comment line to `module`; the stages `dvc status` then calls stale."""
    import contextlib

    from dvc.repo import Repo

    path = project / module
    original = path.read_text()
    path.write_text(original + "# an edit\n")
    try:
        # DVC names stages relative to the working directory: look from inside the project.
        with contextlib.chdir(project), Repo(str(project)) as repo:
            return set(repo.status())
    finally:
        path.write_text(original)


def test_dvc_repro_needs_no_activated_venv(project: Path) -> None:
    """`.venv/bin/dvc repro` with a bare PATH: the stages still find the project's
    interpreter (bin/python), not the system python3 that lacks the dependencies."""
    venv = project / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.executable).parents[1])
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["evaluate"]["latency_rounds"] = 4
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        done = subprocess.run(
            [str(venv / "bin" / "dvc"), "repro", "evaluate"],
            cwd=project,
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": str(project.parent)},
            timeout=600,
        )
    finally:
        params_file.write_text(original)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Running stage 'evaluate'" in done.stdout


def test_make_run_on_an_up_to_date_project_starts_no_flow(project: Path) -> None:
    """`make run` (python -m flows.run) when dvc status is clean: done in a
    couple of seconds, no Prefect server; one stale output, and the flow runs."""

    def make_run() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flows.run"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "DISTILLERY_PYTHON": sys.executable},
        )

    subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=project,
        check=True,
        capture_output=True,
        env={**os.environ, "DISTILLERY_PYTHON": sys.executable},
    )  # whatever the tests before left stale
    done = make_run()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pipeline done: ran ['register'] (always run" in done.stdout
    assert "skipped 10 up-to-date stage(s)" in done.stdout and "no Prefect flow run" in done.stdout
    assert "Starting temporary server" not in done.stdout + done.stderr
    assert "To track the changes with git" not in done.stdout
    (project / "reports/summaries/select.md").unlink()
    done = make_run()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pipeline done: ran ['select', 'register']" in done.stdout
    assert (project / "reports/summaries/select.md").exists()
    # The console ends with what a user needs next, and DVC's git hints are said once, not per stage.
    last = "\n".join(done.stdout.splitlines()[-15:])
    champion = yaml.safe_load((project / "reports/selection.json").read_text())["champion"]
    assert f"champion: {champion}: macro-F1 " in last and "models/champion.onnx" in last and "make serve" in last
    from mlflow import MlflowClient

    held = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_model_version_by_alias(
        "distillery-digits", "champion"
    )
    assert f"registry: distillery-digits version {held.version}, alias @champion" in last  # asked of the registry
    assert "To track the changes with git" not in done.stdout
    assert done.stdout.count("git add dvc.lock") == 1


def test_failed_gate_stops_the_flow_naming_the_expectation(project: Path, harness) -> None:
    from flows.pipeline import StageFailed

    strict = json_suite_with_min_count(project, 10_000)
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["validate"]["suite"] = str(strict.relative_to(project))
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        with pytest.raises(StageFailed) as failure:
            _run_flow(project)
    finally:
        params_file.write_text(original)
    assert failure.value.stage == "validate"
    assert failure.value.exit_code == 2 and not failure.value.transient
    assert "expect_column_value_counts_to_be_at_least" in str(failure.value)
    report = yaml.safe_load((project / "reports/validation.json").read_text())
    assert report["success"] is False


def _failing_once(tmp_path: Path, stage: str, code: int) -> tuple[Path, Path]:
    """An interpreter for the stage commands (bin/python runs $DISTILLERY_PYTHON)
    that exits `code` the first time `stage` runs, then runs it for real; and
    the file counting the stage's attempts."""
    attempts = tmp_path / f"{stage}-attempts"
    wrapper = tmp_path / f"python-failing-{stage}-once"
    wrapper.write_text(f"""#!/bin/sh
if [ "$2" = "tasks.{stage}" ]; then
    echo attempt >> "{attempts}"
    if [ "$(wc -l < "{attempts}")" -eq 1 ]; then echo "injected failure" >&2; exit {code}; fi
fi
exec "{sys.executable}" "$@"
""")
    wrapper.chmod(0o755)
    return wrapper, attempts


@pytest.mark.parametrize("code", [1, 2], ids=["transient-retried", "expected-not-retried"])
def test_a_transient_stage_failure_is_retried_and_an_exit_2_is_not(
    project: Path, harness, monkeypatch, tmp_path, code
) -> None:
    import flows.pipeline as pipeline_module
    from flows.pipeline import StageFailed

    subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=project,
        check=True,
        capture_output=True,
        env={**os.environ, "DISTILLERY_PYTHON": sys.executable},
    )  # whatever the tests before left stale
    wrapper, attempts = _failing_once(tmp_path, "select", code)
    real_env = pipeline_module._stage_env
    monkeypatch.setattr(pipeline_module, "_stage_env", lambda *a: {**real_env(*a), "DISTILLERY_PYTHON": str(wrapper)})
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["select"]["max_f1_drop"] = 1e9 + code  # select is stale, nothing else (and not in DVC's run cache)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        if code == 1:
            results = _run_flow(project)
            assert [r["stage"] for r in results if r["ran"]] == ["select", "register"]
            assert attempts.read_text().count("attempt") == 2  # failed once, retried, done
        else:
            with pytest.raises(StageFailed) as failure:
                _run_flow(project)
            assert failure.value.exit_code == 2 and not failure.value.transient
            assert attempts.read_text().count("attempt") == 1  # a bad-input failure is not retried
            assert "injected failure" in failure.value.output
    finally:
        params_file.write_text(original)


def test_a_missing_data_path_is_exit_2_naming_the_key_before_any_stage(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p", path="data/raw/missing.csv")
    done = subprocess.run(
        [sys.executable, "-m", "flows.pipeline"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DISTILLERY_PYTHON": sys.executable},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "'data.path' is 'data/raw/missing.csv'" in done.stderr and "does not exist" in done.stderr
    assert "Retry" not in done.stdout + done.stderr and "Running stage" not in done.stdout


@pytest.mark.parametrize("driver", [["-m", "dvc", "repro"], ["-m", "flows.run"]], ids=["dvc-repro", "make-run"])
def test_kill_9_during_a_stage_then_the_same_driver_recovers_with_no_lock_cleanup(project: Path, driver) -> None:
    """SIGKILL to the whole driver (dvc, the flow, its stage, Prefect's server) in
    the middle of the teacher's training; the next run needs no manual lock
    removal, reruns what the kill left unfinished, and ends with dvc status clean."""
    import signal
    import time

    env = {**os.environ, "DISTILLERY_PYTHON": sys.executable}
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train"]["max_epochs"] = 30 + len(driver)  # train and what follows are stale; the kill lands in train
    params["train"]["patience"] = 30
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    log = project / f"killed-{driver[1]}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, *driver],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 300
    while "Running stage 'train'" not in log.read_text() or not (project / "models").exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    time.sleep(4)  # well inside the training loop
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run([sys.executable, *driver], cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Running stage 'train'" in done.stdout and "busy" not in done.stdout + done.stderr
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    assert status.stdout.split() == ["register:", "always", "changed"], status.stdout  # it asks the registry


def json_suite_with_min_count(project: Path, min_count: int) -> Path:
    import json

    source = yaml.safe_load((project / "params.yaml").read_text())["data"]["source"]
    suite = json.loads((project / f"expectations/{source}.json").read_text())
    for expectation in suite["expectations"]:
        if expectation["type"] == "expect_column_value_counts_to_be_at_least":
            expectation["kwargs"]["min_count"] = min_count
    path = project / "expectations/strict.json"
    path.write_text(json.dumps(suite))
    return path


def test_stage_cli_rejects_bad_params_with_exit_2(project: Path) -> None:
    """A stage run by hand exits 2 on bad params, naming key and file, with no traceback."""
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params_file.write_text(original.replace("train:", "train:\n  lrr: 0.1", 1))
    try:
        done = subprocess.run([sys.executable, "-m", "tasks.train"], cwd=project, capture_output=True, text=True)
    finally:
        params_file.write_text(original)
    assert done.returncode == 2
    assert "train.lrr" in done.stderr and "params.yaml" in done.stderr and "did you mean 'lr'" in done.stderr
    assert "Traceback" not in done.stderr


def test_penguins_run_through_the_gate_to_a_registered_champion(tmp_path: Path, harness) -> None:
    """The messy tabular path: corrections on, quality report written, champion registered."""
    import onnxruntime as ort
    from mlflow import MlflowClient

    root = make_project(tmp_path, source="penguins")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["slice_column"] = "Island"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    results = _run_flow(root)
    assert all(r["ran"] for r in results)

    quality = yaml.safe_load((root / "reports/data_quality.json").read_text())
    assert quality["balance"]["counts"] == {"Adelie": 152, "Gentoo": 124, "Chinstrap": 68}
    assert quality["balance"]["imbalance_ratio"] == pytest.approx(152 / 68)
    assert quality["completeness"]["columns"]["Sex"]["missing"] == 11
    assert quality["uniqueness"]["duplicate_rows"] == 0
    assert quality["representation"]["columns"]["Species"]["renamed"]["Gentoo penguin (Pygoscelis papua)"] == "Gentoo"
    validation = yaml.safe_load((root / "reports/validation.json").read_text())
    assert validation["rows_in"] == validation["rows_valid"] + validation["rows_quarantined"] == 344
    assert (root / "reports/data_docs/index.html").exists()
    assert (root / "reports/quality/missingness.png").stat().st_size > 0

    slices = yaml.safe_load((root / "reports/evaluation.json").read_text())["slices"]
    islands = slices["candidates"]["teacher.fp32"]
    assert slices["column"] == "Island" and set(islands) <= {"Biscoe", "Dream", "Torgersen"}
    test_rows = len(np.load(root / "data/processed/test.npz")["y"])
    assert sum(v["rows"] for v in islands.values()) == test_rows

    # Raw rows -> the shared encoder -> the champion: the serving path, end to end.
    meta = read_meta(root / "data/processed")
    rows = __import__("pandas").read_parquet(root / "data/validated/table.parquet").head(4)
    session = ort.InferenceSession(str(root / "models/champion.onnx"), providers=["CPUExecutionProvider"])
    probabilities = session.run([PROBABILITIES], {TABLE_INPUT: meta.encoder.encode(rows)})[0]
    assert probabilities.shape == (4, 3)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    tags = client.get_model_version_by_alias("distillery-penguins", "champion").tags
    assert tags["data_hash"] == meta.data_hash and tags["task"] == "multiclass"
