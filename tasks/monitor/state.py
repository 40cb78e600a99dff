"""What the monitor has done, kept between passes in `monitor.state_file`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tasks.core.errors import DistilleryError
from tasks.core.io import read_json, write_json


@dataclass
class MonitorState:
    """What the monitor has done, in `monitor.state_file`.

    `watermark`: rows before it have been judged, and any retrain they called
    for was triggered; it moves only when a run succeeds. `logged_until`:
    windows before it are in MLflow, so a rerun after a failed trigger does not
    log them twice. `feedback`: rows of each feedback file already scored."""

    watermark: Optional[float] = None
    logged_until: Optional[float] = None
    feedback: dict[str, int] = field(default_factory=dict)


def read_state(path: str | Path) -> MonitorState:
    path = Path(path)
    if not path.exists():
        return MonitorState()
    data = read_json(path, "monitor state")
    try:
        feedback = {str(k): int(v) for k, v in data.get("feedback", {}).items()}
        return MonitorState(data.get("watermark"), data.get("logged_until"), feedback)
    except (AttributeError, TypeError, ValueError) as err:
        raise DistilleryError(f"{path}: not a monitor state file ({err}); delete it to re-read the whole log") from err


def write_state(path: str | Path, state: MonitorState) -> None:
    def stamp(ts: Optional[float]) -> Optional[str]:
        return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

    write_json(
        path,
        {
            "watermark": state.watermark,
            "watermark_utc": stamp(state.watermark),
            "logged_until": state.logged_until,
            "logged_until_utc": stamp(state.logged_until),
            "feedback": state.feedback,
        },
    )
