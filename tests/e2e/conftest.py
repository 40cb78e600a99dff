"""Fixtures the e2e modules share; the shared helpers are in e2e_helpers.py
(a module of its own: three conftest.py files share that name, so none is
imported by name)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def harness():
    """A temporary Prefect server for the flows a module runs in-process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
