"""The project's error type, and the entry point that turns it into exit code 2."""

from __future__ import annotations

import sys
from typing import Callable


class DistilleryError(Exception):
    """An expected failure: bad params, bad data or a failed gate.

    Its message names the file, key, column or field, and says what to do.
    Entry points turn it into exit code 2 with no traceback.
    """


EXIT_EXPECTED_FAILURE = 2


def run_cli(main: Callable[[], None]) -> None:
    """Run a stage's main(); expected failures exit 2 with their message only."""
    try:
        main()
    except DistilleryError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_EXPECTED_FAILURE)
