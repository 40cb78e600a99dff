"""Serve tests: real servers on loopback. A package, so that its conftest does
not shadow tests/unit/conftest.py (which unit tests import by name)."""
