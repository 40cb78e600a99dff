"""The server's settings: read once from environment variables into a frozen,
typed object.

Every setting is `DISTILLERY_SERVE_<NAME>` (the tracking URI keeps MLflow's own
`MLFLOW_TRACKING_URI`). A value that does not parse, lies out of range, or an
unknown `DISTILLERY_SERVE_*` variable (a typo) is refused with a message naming
the variable; `python -m deploy.server` then exits 2. `python -m deploy.server
--help` prints this table with the defaults.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from tasks.contracts.registry import CHAMPION_ALIAS
from tasks.core.errors import DistilleryError
from tasks.core.params import PARAMS_FILE

PREFIX = "DISTILLERY_SERVE_"


def _setting(
    default: Any, doc: str, env: str | None = None, minimum: float | None = None, maximum: float | None = None
) -> Any:
    return field(default=default, metadata={"doc": doc, "env": env, "min": minimum, "max": maximum})


@dataclass(frozen=True)
class ServeSettings:
    # What to serve
    model: str = _setting(
        "models:/distillery@champion",
        "an ONNX file, or a registry URI models:/<name>@<alias> (followed as the alias moves) or models:/<name>/<version>; "
        "in a project, the default is its own champion, models:/distillery-<data name>@champion (params.yaml)",
    )
    model_name: str = _setting(
        "", "the name clients use in /v2/models/<name>; empty = the registered name, or 'distillery' for a file"
    )
    tracking_uri: str = _setting(
        "sqlite:///mlflow.db", "MLflow tracking/registry URI for models:/ sources", env="MLFLOW_TRACKING_URI"
    )
    poll_interval_s: float = _setting(
        5.0, "how often the alias (or the file) is checked for a new model; 0 = never", minimum=0
    )
    ort_threads: int = _setting(
        1, "onnxruntime intra-op threads per run; small models are fastest on 1", minimum=1, maximum=256
    )

    # Where to listen, and who may call
    host: str = _setting(
        "127.0.0.1", "bind address; 0.0.0.0 only behind something that controls access (a container, a cluster)"
    )
    port: int = _setting(8000, "TCP port", minimum=1, maximum=65535)
    token: str = _setting("", "when set, every endpoint but /v2/health/* needs 'Authorization: Bearer <token>'")
    token_file: str = _setting("", "read the token from this file instead (a mounted secret); exclusive with TOKEN")

    # Limits: what a request may ask, and how much work is taken on at once
    max_body_bytes: int = _setting(4 * 1024 * 1024, "largest request body; bigger gets 413", minimum=1)
    max_rows: int = _setting(1024, "most rows (samples) in one request; more gets 422 naming this limit", minimum=1)
    max_image_pixels: int = _setting(
        4096 * 4096,
        "most pixels the picture files of one request may hold together, as stored (before resizing); more "
        "(a decompression bomb) gets 413 naming the picture",
        minimum=1,
    )
    max_concurrency: int = _setting(64, "requests being decoded, batched and answered at once", minimum=1)
    max_queue: int = _setting(
        256, "requests waiting for one of those slots; beyond it, 503 with Retry-After", minimum=0
    )
    request_timeout_s: float = _setting(
        10.0, "longest a request may take end to end; then 504 (408 if its body was still arriving)", minimum=0.001
    )
    header_timeout_s: float = _setting(
        10.0,
        "a request's headers must arrive within this of its first byte, or 408; a connection silent this long is closed",
        minimum=0.001,
    )
    keep_alive_s: float = _setting(5.0, "an idle kept-alive connection is closed after this", minimum=0.001)
    max_connections: int = _setting(
        1024, "open connections; one more is answered 503 with Retry-After and closed before it is read", minimum=1
    )
    retry_after_s: int = _setting(1, "Retry-After seconds sent with 503", minimum=0)

    # Micro-batching: concurrent requests share one onnxruntime run
    max_batch: int = _setting(64, "most rows in one onnxruntime run (a bigger single request runs alone)", minimum=1)
    max_wait_ms: float = _setting(
        1.0,
        "how long a batch may wait for more rows, only while other requests are in flight (a lone request never waits)",
        minimum=0,
    )

    # Shutdown (SIGTERM): readiness 503 first, then drain, then exit
    drain_grace_s: float = _setting(
        5.0, "after SIGTERM, keep serving this long with readiness 503 so load balancers stop sending", minimum=0
    )
    shutdown_timeout_s: float = _setting(30.0, "then wait at most this long for in-flight requests", minimum=0)

    # Prediction log: every answered row, to SQLite (WAL) files in log_dir
    log_dir: str = _setting("logs/predictions", "folder of the prediction log (one SQLite file per UTC day)")
    log_max_buffer: int = _setting(
        1000,
        "rows held in memory before a write (a request waits while it is full; one larger request is written alone); a crash loses at most max(these, MAX_ROWS)",
        minimum=1,
    )
    log_flush_interval_s: float = _setting(1.0, "longest a row waits in memory before it is written", minimum=0.01)

    # The server's own log
    log_level: str = _setting("info", "debug | info | warning | error")
    access_log: bool = _setting(False, "one log line per request (uvicorn's access log)")

    def __post_init__(self) -> None:
        if self.token and self.token_file:
            raise DistilleryError(f"{PREFIX}TOKEN and {PREFIX}TOKEN_FILE are both set; use one")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise DistilleryError(f"{PREFIX}LOG_LEVEL={self.log_level!r}: must be one of debug, info, warning, error")
        if not self.model:
            raise DistilleryError(f"{PREFIX}MODEL is empty: give an ONNX file or models:/<name>@<alias>")

    @property
    def registry(self) -> bool:
        return self.model.startswith("models:/")

    def bearer_token(self) -> str:
        """The token, from TOKEN or TOKEN_FILE (stripped of its trailing newline)."""
        if not self.token_file:
            return self.token
        try:
            token = open(self.token_file, encoding="utf-8").read().strip()
        except OSError as err:
            raise DistilleryError(f"{PREFIX}TOKEN_FILE={self.token_file}: cannot read it ({err.strerror})") from err
        if not token:
            raise DistilleryError(f"{PREFIX}TOKEN_FILE={self.token_file}: the file is empty")
        return token


def env_name(f: dataclasses.Field) -> str:
    return f.metadata["env"] or PREFIX + f.name.upper()


def _parse(f: dataclasses.Field, raw: str) -> Any:
    name, kind = env_name(f), f.type
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise DistilleryError(f"{name}={raw!r}: must be true or false")
    if kind == "str":
        return raw
    try:
        value = int(raw) if kind == "int" else float(raw)
    except ValueError:
        what = "an integer" if kind == "int" else "a number"
        raise DistilleryError(f"{name}={raw!r}: must be {what}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise DistilleryError(f"{name}={raw!r}: must be a finite number")
    low, high = f.metadata["min"], f.metadata["max"]
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise DistilleryError(f"{name}={raw!r}: must be {bounds}")
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> ServeSettings:
    """Settings from `environ` (default os.environ); strict, errors name the variable."""
    environ = os.environ if environ is None else environ
    fields = dataclasses.fields(ServeSettings)
    known = {env_name(f) for f in fields}
    unknown = sorted(k for k in environ if k.startswith(PREFIX) and k not in known)
    if unknown:
        raise DistilleryError(
            f"unknown setting {unknown[0]} (known: {', '.join(sorted(k for k in known if k.startswith(PREFIX)))})"
        )
    values = {f.name: _parse(f, environ[env_name(f)]) for f in fields if env_name(f) in environ}
    if "model" not in values and os.path.exists(PARAMS_FILE):
        values["model"] = project_model(PARAMS_FILE)
    return ServeSettings(**values)


def project_model(params_file: str) -> str:
    """The champion alias of the project's own registered model: one per
    dataset, named from params.yaml as the register stage names it."""
    from tasks.core.params import load_params

    return f"models:/{load_params(params_file).registered_model}@{CHAMPION_ALIAS}"


def describe() -> str:
    """The settings table for --help and the README."""
    lines = []
    for f in dataclasses.fields(ServeSettings):
        lines.append(f"  {env_name(f)} (default {f.default!r})\n      {f.metadata['doc']}")
    return "\n".join(lines)
