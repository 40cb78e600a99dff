"""A warm interpreter for the stages: one process that has imported torch,
MLflow, scikit-learn, Great Expectations and the rest forks a child for each
`bin/python -m tasks.<stage>`, so a stage starts in milliseconds instead of
the 3 to 7 seconds those imports take (on a 2-core laptop, 12 stages spend
about 40 of a small run's 75 seconds importing).

The flow starts one for its stages (`warm_interpreter`); `bin/python` hands a
stage to it when `$DISTILLERY_WARM_SOCKET` names its socket, by running this
file as a client. The client passes its stdin, stdout and stderr, arguments,
working directory and environment; the child takes them on before it runs
the module exactly as `python -m` does, so DVC, the flow and the user see a
stage as before: same output, same exit status, signals forwarded, and the
stage killed if the client is. Anything the warm process cannot run as a
fresh interpreter would (another interpreter, `-c`, a module it has loaded
itself, thread or locale settings the libraries read when they load) runs in
a fresh interpreter instead, as without it.

Standard library only, at module level, and only what the client needs: it runs
with `python -I -S` before every warm stage.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import selectors
import signal
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Iterator

SOCKET_ENV = "DISTILLERY_WARM_SOCKET"
# The interpreter the warm process runs: bin/python hands it only what it would run with that one
# (a DISTILLERY_PYTHON that is a wrapper script, say, is run as it is).
INTERPRETER_ENV = "DISTILLERY_WARM_PYTHON"

# What the stages import and the imports cost (python -X importtime on each stage). Third-party
# only: the project's own modules are imported by each child, from its working directory.
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "scipy.stats",
    "sklearn.datasets",
    "sklearn.dummy",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.model_selection",
    "torch",
    "torch.nn",
    "torch.optim",
    "torch.utils.data",
    "torch._dynamo",  # the first optimizer imports it (~2 s)
    "torch.onnx",
    "onnx",  # not onnxruntime: a forked child that loaded it from its parent hangs at exit (and it loads in 0.2 s)
    "skl2onnx",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "great_expectations",
    "matplotlib",
    "PIL.Image",
    "yaml",
    "tqdm.auto",
)

# Settings the preloaded libraries read when they load (thread pools, CUDA, locale, home and
# temporary folders): a stage whose values differ from the warm process's runs fresh.
LOAD_TIME_ENV = (
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "GOTO",
    "KMP_",
    "VECLIB_",
    "NUMEXPR_",
    "TORCH",
    "PYTORCH",
    "CUDA",
    "NVIDIA",
    "PYTHON",
    "LD_",
    "LANG",
    "LC_",
    "MPL",
    "GX_",
    "MLFLOW_CONFIGURE_LOGGING",
    "MLFLOW_LOGGING_LEVEL",
    "HOME",
    "TMPDIR",
)
# The signals a client passes on to its stage, as a parent's would reach a child.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
MAX_REQUEST = 1 << 20


# Pools that size themselves from OMP_NUM_THREADS when their own setting is unset: a Dask worker
# sets all three to 1, which is the same pool as OMP_NUM_THREADS=1 alone.
OMP_FALLBACK = ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _load_time_env(env: dict[str, str], cwd: str) -> dict[str, str]:
    found = {key: value for key, value in env.items() if key.startswith(LOAD_TIME_ENV)}
    # `python -m` in `cwd` puts it first on sys.path, as the child does: a PYTHONPATH naming only it (what
    # a Prefect worker sets for its flow runs) changes nothing. Applied to both sides, with the caller's cwd.
    if "PYTHONPATH" in found:
        here = os.path.realpath(cwd)
        kept = [
            p for p in found.pop("PYTHONPATH").split(os.pathsep) if p and os.path.realpath(os.path.join(cwd, p)) != here
        ]
        if kept:
            found["PYTHONPATH"] = os.pathsep.join(kept)
    if "OMP_NUM_THREADS" in found:
        for key in OMP_FALLBACK:
            found.setdefault(key, found["OMP_NUM_THREADS"])
    return found


# ---------------------------------------------------------------- the client (bin/python)


def client(args: list[str]) -> None:
    """Run `python <args>` in the warm process, or exec a fresh interpreter when it can't."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(os.environ[SOCKET_ENV])
        request = {
            "executable": sys.executable,
            "argv": args,
            "cwd": os.getcwd(),
            "umask": _umask(),
            "env": dict(os.environ),
        }
        socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
        replies = sock.makefile("rb")
        started = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError, KeyError):  # no warm process (gone, another machine): a fresh interpreter
        started = {}
    if "pid" not in started:
        os.execv(sys.executable, [sys.executable, *args])
    for number in FORWARDED:
        signal.signal(number, lambda number, _frame: sock.sendall(f"signal {number}\n".encode()))
    line = replies.readline()
    if not line:
        print(f"bin/python: the warm interpreter lost the stage (pid {started['pid']})", file=sys.stderr)
        sys.exit(1)
    code = json.loads(line)["exit"]
    if code < 0:  # killed by a signal: so is this process, for the caller's exit status
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- the warm process


def serve(path: str) -> None:
    """Preload, then listen on `path` until stdin closes (the flow that started it is done or gone).
    The socket appears only once the imports are done: a stage that starts earlier runs fresh."""
    boot = dict(os.environ)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as error:  # a stage that needs it imports it, or fails, itself
            print(f"warm: {name} not preloaded: {error!r}", file=sys.stderr)
    if reason := _unsafe_to_fork():  # a preload the list above should not have
        print(f"warm: not serving: {reason}", file=sys.stderr)
        return
    me = os.getpid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin, selectors.EVENT_READ, "stop")
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, the client's connection)
    try:
        while listener.fileno() >= 0 or children:
            for key, _ in selector.select():
                if key.data == "accept":
                    conn, _ = listener.accept()
                    inherited = [selector, listener, *(c for _, c in children.values()), *children]
                    if started := _start(conn, boot, inherited):
                        children[started[0]] = started[1:]
                        selector.register(started[0], selectors.EVENT_READ, "child")
                elif key.data == "stop":
                    if not os.read(sys.stdin.fileno(), 4096):
                        selector.unregister(sys.stdin)
                        selector.unregister(listener)
                        listener.close()
                        os.unlink(path)
                else:
                    pid, conn = children.pop(key.fd)
                    selector.unregister(key.fd)
                    os.close(key.fd)
                    _, status = os.waitpid(pid, 0)
                    with contextlib.suppress(OSError), conn:
                        conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
    finally:
        if os.getpid() == me and os.path.exists(path):
            os.unlink(path)


def _unsafe_to_fork() -> str | None:
    import threading

    if threading.active_count() > 1:
        return f"a preloaded library started threads: {[t.name for t in threading.enumerate()]}"
    if "onnxruntime" in sys.modules:
        return "onnxruntime was loaded, and a forked child of a process that loaded it hangs at exit"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "a preloaded library initialised CUDA, which does not survive a fork"
    return None


def _start(conn: socket.socket, boot: dict[str, str], inherited: list) -> tuple[int, int, socket.socket] | None:
    """Fork a child for the client on `conn`: (pidfd, pid, conn), or None when it runs fresh.
    `boot`: this process's environment before the imports, some of which set variables of their own."""
    fds: list[int] = []
    try:
        conn.settimeout(5)
        data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
        while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
            more = conn.recv(MAX_REQUEST)
            if not more:
                break
            data += more
        conn.settimeout(None)
        request = json.loads(data)
        # What the imports set (torch: KMP_INIT_AT_FORK, ...), as they would have in a fresh interpreter.
        added = {key: value for key, value in os.environ.items() if key not in boot}
        reason = _refusal(request, fds, boot, added)
    except (OSError, ValueError) as error:
        reason = f"unreadable request: {error!r}"
    if reason:
        with contextlib.suppress(OSError), conn:
            conn.sendall(json.dumps({"refused": reason}).encode() + b"\n")
        for fd in fds:
            os.close(fd)
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(conn, request, {**added, **request["env"]}, fds, inherited)  # exits: never comes back
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    return pidfd, pid, conn


def _refusal(request: dict, fds: list[int], boot: dict[str, str], added: dict[str, str]) -> str | None:
    """Why this request must run in a fresh interpreter, if it must."""
    argv = request.get("argv", [])
    if len(fds) != 3:
        return "stdin, stdout and stderr did not arrive"
    if request.get("executable") != sys.executable:
        return f"another interpreter ({request.get('executable')}, this is {sys.executable})"
    if len(argv) < 2 or argv[0] != "-m":
        return "only `python -m <module>` runs warm"
    if argv[1].split(".")[0] in sys.modules:
        return f"{argv[1]}: loaded here already, so not from the caller's working directory"
    cwd = request.get("cwd", "")
    # A value this process's own imports set (`added`; torch: TORCHINDUCTOR_CACHE_DIR, its default) is what the
    # stage's imports would set too: a caller that imported torch itself (a Dask worker) passes it on, unchanged.
    env = {k: v for k, v in request.get("env", {}).items() if k not in added or added[k] != v}
    if (wanted := _load_time_env(env, cwd)) != (mine := _load_time_env(boot, cwd)):
        differ = sorted(k for k in wanted.keys() | mine.keys() if wanted.get(k) != mine.get(k))
        return f"settings the libraries read when they load differ: {differ}"
    return None


def _child(conn: socket.socket, request: dict, env: dict[str, str], fds: list[int], inherited: list) -> None:
    """Become `python -m <module> <args>` started by the client, then exit as it would."""
    import atexit
    import runpy
    import tempfile
    import threading
    import traceback
    import types

    for thing in inherited:
        if isinstance(thing, int):
            os.close(thing)
        else:
            thing.close()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)  # sys.stdin/stdout/stderr and every handler bound to them follow the fds
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for stream, lines in ((sys.stdout, os.isatty(1)), (sys.stderr, True)):
        if isinstance(stream, io.TextIOWrapper):  # buffered as Python buffers them for these fds
            stream.reconfigure(line_buffering=lines, write_through=unbuffered)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_follow_client, args=(conn,), name="warm-client", daemon=True).start()
    module, sys.argv = request["argv"][1], ["-m", *request["argv"][2:]]
    sys.path.insert(0, request["cwd"])  # what `python -m` puts first (this process runs with -P)
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        runpy._run_module_as_main(module)  # type: ignore[attr-defined]  # what `python -m` calls
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BaseException as error:  # reported as CPython does, from the module's frames on
        error.__traceback__ = error.__traceback__.tb_next if error.__traceback__ else None
        if isinstance(error, KeyboardInterrupt):
            traceback.print_exception(error)
            code = -signal.SIGINT  # CPython exits by the signal on an unhandled Ctrl-C
        else:
            sys.excepthook(type(error), error, error.__traceback__)
            code = 1
    # Python's own exit, less the C-level teardown: libraries' native destructors, inherited across
    # the fork, abort or hang on threads this process never had (multiprocessing's children skip it too).
    threading._shutdown()  # type: ignore[attr-defined]  # wait for non-daemon threads, as at exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _exit_code(code: object) -> int:
    """The exit status `sys.exit(code)` gives, as CPython decides it (a message is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _follow_client(conn: socket.socket) -> None:
    """Pass on the client's signals; when the client is gone (killed), go with it."""
    for line in conn.makefile("rb"):
        if line.startswith(b"signal "):
            os.kill(os.getpid(), int(line.split()[1]))
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- the flow's side


@contextlib.contextmanager
def warm_interpreter(python: str = sys.executable) -> Iterator[dict[str, str]]:
    """A warm process for the stages run inside the block: the environment to give them.
    One already named by $DISTILLERY_WARM_SOCKET and $DISTILLERY_WARM_PYTHON is used as it is; where processes
    cannot be watched by pidfd (not Linux), the stages run fresh."""
    import subprocess
    import tempfile
    from pathlib import Path

    if not hasattr(os, "pidfd_open"):
        yield {}
        return
    if (existing := os.environ.get(SOCKET_ENV)) and os.path.exists(existing) and os.environ.get(INTERPRETER_ENV):
        yield {SOCKET_ENV: existing, INTERPRETER_ENV: os.environ[INTERPRETER_ENV]}
        return
    # A short folder: a socket's path must fit in 107 bytes, which a deep $TMPDIR can exceed.
    folder = Path(tempfile.mkdtemp(prefix="distillery-warm-", dir="/tmp" if os.path.isdir("/tmp") else None))
    path = folder / "socket"
    with open(folder / "log", "wb") as log:
        # Its own session: a Ctrl-C in the terminal reaches the stages through their clients, once.
        process = subprocess.Popen(
            [python, "-P", __file__, "serve", str(path)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield {SOCKET_ENV: str(path), INTERPRETER_ENV: python}
    finally:
        assert process.stdin is not None
        if not path.exists():  # still importing, so it has run nothing: not worth waiting for
            process.kill()
        process.stdin.close()  # it stops listening, and exits once its running stages have
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        said = (folder / "log").read_text(errors="replace")
        # Said why the stages ran fresh, or which imports were left to them:
        if process.returncode not in (0, -signal.SIGKILL) or "warm:" in said:
            print(f"the warm interpreter (exit {process.returncode}):\n{said[-2000:]}", file=sys.stderr)
        (folder / "log").unlink()
        folder.rmdir()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 3:
        serve(sys.argv[2])
    elif sys.argv[1:2] == ["client"]:
        client(sys.argv[2:])
    else:
        sys.exit("usage: warm.py serve <socket> | warm.py client <python arguments>")
