"""Entry point: `python -m deploy.server` (or `make serve`).

Reads the settings (environment variables, see --help), loads and checks the
model before listening (a bad model or setting exits 2 with the reason), then
serves with uvicorn on one event loop.

SIGTERM (what Kubernetes and `docker stop` send): readiness turns 503 at once,
requests keep being answered for DISTILLERY_SERVE_DRAIN_GRACE_S so that load
balancers notice, then the server stops listening, waits up to
DISTILLERY_SERVE_SHUTDOWN_TIMEOUT_S for in-flight requests, flushes the
prediction log and exits 0. A second SIGTERM, or SIGINT (Ctrl-C), skips the
grace period. SIGHUP reloads the model now.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from types import FrameType

from deploy.app import ServingApp
from deploy.metrics import Metrics
from deploy.model import make_source
from deploy.reload import ModelManager
from deploy.settings import ServeSettings, describe, load_settings
from tasks.core.errors import run_cli

log = logging.getLogger("deploy.server")


def build_app(settings: ServeSettings) -> ServingApp:
    """Load and check the model, and build the application around it."""
    metrics = Metrics()
    source = make_source(settings.model, settings.model_name, settings.tracking_uri)
    manager = ModelManager(source, settings.ort_threads, settings.poll_interval_s, metrics)
    manager.load_initial()
    app = ServingApp(settings, manager, metrics)
    app.predlog.check()
    return app


def _uvicorn_server(app: ServingApp, settings: ServeSettings):
    import uvicorn

    from deploy.connections import guarded_protocol

    class DrainingServer(uvicorn.Server):
        """uvicorn, with SIGTERM turned into: drain, then stop."""

        drain_deadline: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig == signal.SIGTERM and self.drain_deadline is None and not self.should_exit:
                app.begin_drain()
                self.drain_deadline = time.monotonic() + settings.drain_grace_s
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
                self.should_exit = True
            return await super().on_tick(counter)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools, with a connection cap and a header deadline (deploy/connections.py)
        http=guarded_protocol(settings.max_connections, settings.header_timeout_s, settings.retry_after_s),
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # uvicorn uses it as seconds, float or not
        lifespan="on",
        access_log=settings.access_log,
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_timeout_s)),
        server_header=False,
        proxy_headers=False,  # clients reach it directly or through a Service; no X-Forwarded-* to trust
    )
    return DrainingServer(config)


def serve(settings: ServeSettings) -> None:
    import numpy as np

    # Requests are checked for non-finite values explicitly (deploy.protocol); a value
    # beyond float32 range becomes inf on the cast, and numpy's warning about it is noise.
    np.seterr(over="ignore", invalid="ignore")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if settings.registry:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a progress bar per reload is log noise
        # The watcher polls again every POLL_INTERVAL_S: one poll must not spend minutes in
        # MLflow's retries (7 by default, with backoff) while the tracking server is down.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        import mlflow

        mlflow.set_tracking_uri(settings.tracking_uri)
    app = build_app(settings)
    try:
        _uvicorn_server(app, settings).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down gracefully
        pass


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.server",
        description="Serve the Distillery champion (Open Inference Protocol v2 and /predict). "
        "Settings are environment variables:\n\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args()
    serve(load_settings())


if __name__ == "__main__":
    run_cli(main)
