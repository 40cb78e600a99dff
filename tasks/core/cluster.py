"""The Dask cluster a stage may send independent work to: DISTILLERY_DASK_ADDRESS
(the flow's --dask-address sets it for every stage). Unset, stages work here.

Only the work inside a stage goes there, never DVC's bookkeeping: the stage
still writes its outputs and DVC records them once, so where the work ran is
not a stage input and moving it reruns nothing. Workers must see the project
folder at the same path (one machine, or a shared filesystem)."""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Optional, Sequence

from tasks.core.errors import DistilleryError

DASK_ENV = "DISTILLERY_DASK_ADDRESS"


def dask_address() -> Optional[str]:
    return os.environ.get(DASK_ENV) or None


def connect_dask(address: str) -> Any:
    """A client of the Dask scheduler at `address`, or one error naming it."""
    from distributed import Client

    try:
        _raise_if_refused(address)
        return Client(address, timeout="15s")
    except (OSError, TimeoutError) as err:
        raise DistilleryError(
            f"{DASK_ENV}={address} (or --dask-address): no Dask scheduler answers there ({err}); "
            "start one (`dask scheduler`, then `dask worker <address>`) or unset it"
        ) from err


def _raise_if_refused(address: str) -> None:
    """ConnectionRefusedError at once when nothing listens on a tcp:// address:
    Dask's client would retry a refused connection for its whole timeout. A slow or
    filtered address (no answer at all) is left to that timeout."""
    if not address.startswith("tcp://"):
        return
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
    except socket.timeout:
        return


def check_scheduler(address: str) -> None:
    connect_dask(address).close()


def map_on_cluster(fn: Callable, calls: Sequence[tuple], address: str) -> list:
    """fn(*args) for each args tuple, as Dask tasks at `address`; the results in
    order. A task's error is raised here, as if it had run in this process."""
    client = connect_dask(address)
    try:
        return client.gather([client.submit(fn, *args, pure=False) for args in calls])
    finally:
        client.close()
