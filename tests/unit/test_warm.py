"""The warm interpreter (flows/warm.py) through bin/python, as dvc.yaml's
commands reach it: a module runs there exactly as under `python -m` (arguments,
working directory, environment, stdin, output, exit status, tracebacks,
results), signals reach it, it dies with its caller, and whatever it cannot
run as a fresh interpreter would runs in a fresh interpreter. The probe knows
which it ran in: a fresh interpreter has not imported torch before it starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from flows.warm import INTERPRETER_ENV, SOCKET_ENV, warm_interpreter

REPO = Path(__file__).resolve().parents[2]
BIN_PYTHON = str(REPO / "bin" / "python")

PROBE = """
import json, os, sys, time
warm = "torch" in sys.modules  # before the probe imports anything heavy
weights = draw = None
if not os.environ.get("PROBE_LIGHT"):  # the tests that only ask where it ran skip a fresh torch import
    import numpy as np, torch
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    weights, draw = net.weight.detach().double().sum().item(), np.random.default_rng(0).normal()
print(json.dumps({
    "warm": warm,
    "name": __name__,
    "argv": sys.argv,
    "cwd": os.getcwd(),
    "probe_env": os.environ.get("PROBE"),
    "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
    "stdin": sys.stdin.read() if "--stdin" in sys.argv else None,
    "weights": weights,
    "numpy": draw,
}))
print("to stderr", file=sys.stderr)
if "--pid" in sys.argv:
    open(sys.argv[-1], "w").write(str(os.getpid()))
    time.sleep(60)
if "--raise" in sys.argv:
    raise ValueError("the probe's own error")
sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
"""


def wait_until_ready(path: str, timeout: float = 60) -> bool:
    """Whether the warm process at `path` is listening within `timeout` seconds (its imports take a few)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(autouse=True, scope="module")
def _no_warm_interpreter_around():
    """Its own, not the one the e2e modules share when they ran first in this test worker."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(SOCKET_ENV, raising=False)
        patch.delenv(INTERPRETER_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def warm(_no_warm_interpreter_around) -> dict[str, str]:
    before = _warm_processes()
    with warm_interpreter() as env:
        (started,) = set(_warm_processes()) - set(before)
        assert wait_until_ready(env[SOCKET_ENV]), "the warm interpreter never listened"
        yield env
    assert not started.is_running(), "the warm interpreter outlived its block"
    assert not Path(env[SOCKET_ENV]).parent.exists()


def _warm_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "warm.py" in " ".join(p.cmdline())]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "probe.py").write_text(textwrap.dedent(PROBE))
    return tmp_path


def _probe(folder: Path, *args: str, warm: dict[str, str] | None, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in (SOCKET_ENV, INTERPRETER_ENV)} | (warm or {}) | env
    return subprocess.run(
        [BIN_PYTHON, "-m", "probe", *args],
        cwd=folder,
        env=environment,
        input="what the caller piped",
        capture_output=True,
        text=True,
        timeout=120,
    )


def _answer(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout.splitlines()[0])


def test_a_module_runs_warm_exactly_as_python_m_runs_it(warm: dict[str, str], folder: Path) -> None:
    warm_run = _probe(folder, "a b", "--stdin", warm=warm, PROBE="given", PROBE_EXIT="3")
    fresh_run = _probe(folder, "a b", "--stdin", warm=None, PROBE="given", PROBE_EXIT="3")
    warm_answer, fresh_answer = _answer(warm_run), _answer(fresh_run)
    assert warm_answer.pop("warm") is True and fresh_answer.pop("warm") is False
    assert warm_answer == fresh_answer  # the same arguments, folder, environment, stdin, and results
    assert warm_answer["argv"] == [str(folder / "probe.py"), "a b", "--stdin"]
    assert warm_answer["name"] == "__main__" and warm_answer["cwd"] == str(folder)
    assert warm_answer["probe_env"] == "given" and warm_answer["stdin"] == "what the caller piped"
    assert warm_run.returncode == fresh_run.returncode == 3
    assert warm_run.stderr == fresh_run.stderr == "to stderr\n"


def test_an_exception_gives_the_traceback_and_status_python_gives(warm: dict[str, str], folder: Path) -> None:
    done, fresh = (
        _probe(folder, "--raise", warm=warm, PROBE_LIGHT="1"),
        _probe(folder, "--raise", warm=None, PROBE_LIGHT="1"),
    )
    assert _answer(done)["warm"] is True
    assert done.returncode == fresh.returncode == 1
    assert 'probe.py", line' in done.stderr and "ValueError: the probe's own error" in done.stderr
    assert done.stderr == fresh.stderr  # the module's frames, none of the warm process's


def _started(folder: Path, warm: dict[str, str]) -> tuple[subprocess.Popen, int]:
    pid_file = folder / "pid"
    environment = {**os.environ, **warm}
    caller = subprocess.Popen(
        [BIN_PYTHON, "-m", "probe", "--pid", str(pid_file)],
        cwd=folder,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert caller.poll() is None and time.monotonic() < deadline, caller.communicate()
        time.sleep(0.1)
    stage = int(pid_file.read_text())
    assert stage != caller.pid  # it ran in the warm process's child, not in the caller
    return caller, stage


def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_signal_to_the_caller_reaches_the_stage_and_its_status_comes_back(warm: dict[str, str], folder: Path) -> None:
    caller, stage = _started(folder, warm)
    caller.send_signal(signal.SIGTERM)
    assert caller.wait(timeout=30) == -signal.SIGTERM  # as if the caller were the stage
    assert _gone(stage)


def test_killing_the_caller_kills_the_stage(warm: dict[str, str], folder: Path) -> None:
    """kill -9 to a `dvc repro` and its children: the stage, a child of the warm process, goes too."""
    caller, stage = _started(folder, warm)
    caller.kill()
    caller.wait(timeout=30)
    assert _gone(stage)


@pytest.mark.parametrize(
    "how",
    [
        "another thread setting",
        "another BLAS pool",
        "another PYTHONPATH",
        "no socket",
        "not -m",
        "a wrapper interpreter",
    ],
)
def test_what_cannot_run_warm_runs_fresh(warm: dict[str, str], folder: Path, how: str) -> None:
    if how == "not -m":
        done = subprocess.run(
            [BIN_PYTHON, str(folder / "probe.py")],
            cwd=folder,
            env={**os.environ, **warm, "PROBE_LIGHT": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    elif how == "no socket":
        done = _probe(folder, warm={**warm, SOCKET_ENV: str(folder / "nothing-listens-here")}, PROBE_LIGHT="1")
    elif how == "a wrapper interpreter":  # DISTILLERY_PYTHON names a script: it runs, with the stage's arguments
        wrapper = folder / "python-wrapper"
        wrapper.write_text(f'#!/bin/sh\necho "$@" > "{folder}/wrapped"\nexec "{warm[INTERPRETER_ENV]}" "$@"\n')
        wrapper.chmod(0o755)
        done = _probe(folder, warm=warm, DISTILLERY_PYTHON=str(wrapper), PROBE_LIGHT="1")
        assert (folder / "wrapped").read_text() == "-m probe\n"
    elif how == "another BLAS pool":  # numpy's OpenBLAS sized its pool when the warm process loaded it
        threads = str(int(os.environ.get("OMP_NUM_THREADS", "1")) + 1)
        done = _probe(folder, warm=warm, OPENBLAS_NUM_THREADS=threads, PROBE_LIGHT="1")
    elif how == "another PYTHONPATH":  # a folder the warm process's sys.path lacks
        (folder / "elsewhere").mkdir()
        done = _probe(folder, warm=warm, PYTHONPATH=f"{folder}{os.pathsep}{folder / 'elsewhere'}", PROBE_LIGHT="1")
    else:  # torch sized its thread pools when the warm process loaded it
        threads = str(int(os.environ.get("OMP_NUM_THREADS", "1")) + 1)
        done = _probe(folder, warm=warm, OMP_NUM_THREADS=threads, PROBE_LIGHT="1")
    assert done.returncode == 0, done.stderr
    assert _answer(done)["warm"] is False


def test_a_dask_workers_thread_settings_are_the_same_pools_as_omp_alone(warm: dict[str, str], folder: Path) -> None:
    """A Dask worker sets OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS to 1: with
    OMP_NUM_THREADS=1 alone, the others default to it, so its stages run warm."""
    if os.environ.get("OMP_NUM_THREADS") != "1":
        pytest.skip("the warm process was not started with OMP_NUM_THREADS=1 (one test worker)")
    done = _probe(folder, warm=warm, MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr
    assert _answer(done)["warm"] is True


@pytest.mark.parametrize("spelling", ["absolute", "relative"])
def test_a_pythonpath_naming_only_the_working_folder_runs_warm(
    warm: dict[str, str], folder: Path, spelling: str
) -> None:
    """A Prefect worker's flow runs get PYTHONPATH=<the project>, the folder the stages run in, which
    `python -m` puts first on sys.path anyway: the retrains `make worker` runs stay warm."""
    done = _probe(folder, warm=warm, PYTHONPATH=str(folder) if spelling == "absolute" else ".", PROBE_LIGHT="1")
    assert done.returncode == 0, done.stderr
    assert _answer(done)["warm"] is True


def test_a_stage_on_a_dask_worker_runs_warm(
    warm: dict[str, str], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Dask worker's environment holds the nanny's PYTHONHASHSEED and, once the worker has imported
    torch, torch's default TORCHINDUCTOR_CACHE_DIR: the stage environment the flow gives it
    (flows.pipeline._stage_env) runs warm; a hash seed of the caller's own, or another cache, does not."""
    from flows.pipeline import NANNY_HASH_SEED, _stage_env

    torch_sets = _answer(_probe(folder, warm=warm, PROBE_LIGHT="1"))["inductor_cache"]
    assert torch_sets  # what the warm process's torch import set, as the worker's did
    monkeypatch.setenv("PYTHONHASHSEED", NANNY_HASH_SEED)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", torch_sets)
    monkeypatch.setenv("PROBE_LIGHT", "1")

    def ran_warm(env: dict[str, str]) -> bool:
        done = subprocess.run(
            [BIN_PYTHON, "-m", "probe"], cwd=folder, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return _answer(done)["warm"]

    stage_env = _stage_env("tcp://127.0.0.1:8786", warm=warm)
    assert "PYTHONHASHSEED" not in stage_env and ran_warm(stage_env)
    assert not ran_warm({**stage_env, "PYTHONHASHSEED": "42"})
    assert not ran_warm({**stage_env, "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor")})


def test_a_block_over_before_the_imports_are_done_leaves_nothing() -> None:
    """A flow with little to run: the warm process, still importing, is stopped with the block."""
    before = _warm_processes()
    with warm_interpreter() as env:
        (started,) = set(_warm_processes()) - set(before)
        assert not Path(env[SOCKET_ENV]).exists()  # not listening yet: its imports take seconds
    assert not started.is_running()
    assert not Path(env[SOCKET_ENV]).parent.exists()


def test_a_block_inside_a_running_one_shares_it(warm: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in warm.items():
        monkeypatch.setenv(name, value)
    with warm_interpreter() as inner:
        assert inner == warm
    assert Path(warm[SOCKET_ENV]).exists()
