"""The progress bar of a stage's long steps (tqdm), one look for all of them: what
is being done, how far, at what rate. On stderr, refreshed at most once a second,
so a flow's captured log stays short."""

from __future__ import annotations

from typing import Iterable, Optional, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], what: str, unit: str, total: Optional[int] = None, quiet: bool = False) -> Iterable[T]:
    """`items`, with a bar that says `what` is done, one `unit` per item."""
    from tqdm.auto import tqdm  # the stages that never show one skip its import

    return tqdm(items, desc=what, unit=unit, total=total, disable=quiet, mininterval=1.0)
