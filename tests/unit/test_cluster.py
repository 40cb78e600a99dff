"""The Dask address check: a port nothing listens on is named at once, not
after Dask's whole connect timeout (tests/e2e/test_dask.py runs the real
cluster and the stages' messages)."""

from __future__ import annotations

import socket

import pytest

from tasks.core.cluster import check_scheduler
from tasks.core.errors import DistilleryError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


def test_a_refused_address_is_named_with_the_reason():
    address = f"tcp://127.0.0.1:{_closed_port()}"
    with pytest.raises(DistilleryError) as err:
        check_scheduler(address)
    assert f"DISTILLERY_DASK_ADDRESS={address} (or --dask-address): no Dask scheduler answers there" in str(err.value)
    assert "refused" in str(err.value).lower()
