"""The model being served, and hot reload.

A watcher polls the source (the registry alias, or the file's stat) every
`poll_interval`. When it moves, the candidate is downloaded, checked
(deploy.model.build_model: sha256, onnxruntime load, contract, trial run) and
compared with the served model's client contract (deploy.model.check_compatible:
the raw input and the answers, not the graph's tensors), all off the event
loop; only then is it swapped in, by one assignment. A request takes the model
once and keeps it: it is parsed, encoded, batched (deploy.batching keeps each
batch to one model) and answered by that model, so rows a table model's
encoder made never reach a model of another encoded width. A candidate that
fails leaves the old model serving and readiness up; it is logged, counted,
and not tried again until the source moves once more (or an explicit reload
asks).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Hashable

from deploy.metrics import Metrics
from deploy.model import LoadedModel, check_compatible
from tasks.core.errors import DistilleryError

log = logging.getLogger("deploy.reload")


@dataclass
class ReloadResult:
    status: str  # loaded | unchanged | refused
    model: LoadedModel
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"status": self.status, "model_name": self.model.name, "model_version": self.model.version}
        if self.error:
            out["error"] = self.error
        return out


class ModelManager:
    def __init__(self, source: Any, threads: int, poll_interval_s: float, metrics: Metrics):
        self.source, self.threads, self.poll_interval_s = source, threads, poll_interval_s
        self.metrics = metrics
        # Set by load_initial before the server listens; typed as always there, so the hot path reads it unchecked.
        self.current: LoadedModel = None  # type: ignore[assignment]
        self._fingerprint: Hashable = None
        self._refused: Hashable = None
        self._last_poll_error: str | None = None
        self._lock: asyncio.Lock | None = None

    def load_initial(self) -> LoadedModel:
        """The first model, loaded before the server listens: a failure here is
        an error that stops start-up (exit 2)."""
        fingerprint = self.source.fingerprint()
        if fingerprint is None:
            raise DistilleryError(f"{self.source.describe}: model file not found")
        model = self.source.load(self.threads, fingerprint)
        self._install(model, fingerprint)
        return model

    @property
    def served(self) -> LoadedModel:
        """The model being served; there is one from load_initial on."""
        if self.current is None:
            raise RuntimeError("no model loaded yet: load_initial() runs before the server listens")
        return self.current

    def _install(self, model: LoadedModel, fingerprint: Hashable) -> None:
        self.current, self._fingerprint = model, fingerprint  # one assignment: the swap
        self.metrics.set_model(model.name, model.version, model.sha256, model.loaded_at)

    async def reload(self, force: bool = False) -> ReloadResult:
        """Check the source once; swap in a new model if it moved and passes.
        `force` retries a refused candidate and re-reads an unchanged source."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await self._reload(force)

    async def _reload(self, force: bool) -> ReloadResult:
        served = self.served
        try:
            fingerprint = await asyncio.to_thread(self.source.fingerprint)
        except DistilleryError as err:
            if str(err) != self._last_poll_error:  # once per distinct problem, not every poll
                log.warning("cannot check for a new model: %s", err)
                self._last_poll_error = str(err)
            return ReloadResult("unchanged", served, str(err))
        self._last_poll_error = None
        if fingerprint is None or (not force and fingerprint in (self._fingerprint, self._refused)):
            return ReloadResult("unchanged", served)
        try:
            candidate = await asyncio.to_thread(self.source.load, self.threads, fingerprint)
            check_compatible(candidate, served)
        except Exception as err:  # DistilleryError: the checks; anything else: the registry client or onnxruntime
            message = str(err) if isinstance(err, DistilleryError) else f"{type(err).__name__}: {err}"
            self._refused = fingerprint
            self.metrics.reloads.labels("failure").inc()
            log.error("refused a new model; still serving %s version %s: %s", served.name, served.version, message)
            return ReloadResult("refused", served, message)
        if candidate.sha256 == served.sha256 and candidate.version == served.version:
            self._fingerprint = fingerprint  # the file was touched, not changed
            return ReloadResult("unchanged", served)
        self._install(candidate, fingerprint)
        self._refused = None
        self.metrics.reloads.labels("success").inc()
        log.info(
            "now serving %s version %s (sha256 %s, from %s); was version %s",
            candidate.name,
            candidate.version,
            candidate.sha256[:12],
            candidate.source,
            served.version,
        )
        if candidate.signature != served.signature:
            # Within the contract for /predict, but v2 infer on a table model takes the encoded features.
            log.warning(
                "the graph's tensors changed from %s to %s: v2 infer clients that send encoded features "
                "must follow /v2/models/%s",
                served.signature.describe(),
                candidate.signature.describe(),
                candidate.name,
            )
        return ReloadResult("loaded", candidate)

    async def watch(self) -> None:
        """Poll forever (cancelled at shutdown)."""
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.reload()
            except Exception:  # a bug: log it, keep serving, keep watching
                log.exception("the model watcher failed; still serving the current model")
