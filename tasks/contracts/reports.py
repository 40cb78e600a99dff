"""The reports one stage writes and another reads: reports/validation.json
(validate), reports/evaluation.json (evaluate), reports/selection.json and
reports/compression.json (select). Each is a typed record with one reader,
parsed as strictly as params; writers build the record and call `write`, so
the layout is stated here once. Per-candidate figures stay open mappings
(their keys are evaluate's metric names and latency keys), but who the
candidates are is typed: `CandidateId`."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar

from tasks.core import paths
from tasks.core.config import parse
from tasks.core.errors import DistilleryError
from tasks.core.io import read_json, write_json
from tasks.core.task import TaskType

Precision = Literal["fp32", "int8"]
PRUNED = "_pruned"
_NAME = re.compile(r"^(?P<model>[a-z][a-z0-9_]*)\.(?P<precision>fp32|int8)$")


@dataclass(frozen=True)
class CandidateId:
    """One exported candidate: which model (teacher, student, either pruned) in
    which precision. Its `name` ("student_pruned.int8") keys the reports and
    names the ONNX file (models/onnx/<name>.onnx)."""

    model: str  # teacher | student | teacher_pruned | student_pruned
    precision: Precision

    @classmethod
    def parse(cls, name: str) -> "CandidateId":
        match = _NAME.match(name)
        if not match:
            raise DistilleryError(f"{name!r} is not a candidate name (<model>.<fp32|int8>)")
        return cls(match["model"], match["precision"])  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return f"{self.model}.{self.precision}"

    @property
    def pruned(self) -> bool:
        return self.model.endswith(PRUNED)

    @property
    def base(self) -> str:
        """The trained model it comes from: teacher or student."""
        return self.model.removesuffix(PRUNED)

    def lineage(self) -> list["CandidateId"]:
        """The compression steps that lead from the fp32 teacher to this
        candidate: teacher, then student, then pruned, then this precision."""
        steps = [REFERENCE]
        if self.base != REFERENCE.model:
            steps.append(CandidateId(self.base, "fp32"))
        if self.pruned:
            steps.append(CandidateId(self.model, "fp32"))
        steps.append(self)
        return list(dict.fromkeys(steps))

    def __str__(self) -> str:
        return self.name


REFERENCE = CandidateId("teacher", "fp32")  # what every candidate is compared with, in the same runtime


@dataclass(frozen=True)
class ValidationReport:
    """reports/validation.json: the data gate's verdict and every expectation's result."""

    success: bool
    rows_in: int
    rows_valid: int
    rows_quarantined: int
    suite: str
    data_docs: str
    results: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class EvaluationReport:
    """reports/evaluation.json: every candidate scored on the test split and timed."""

    task: TaskType
    test_rows: int
    latency_threads: tuple[int, ...]
    candidates: dict[str, dict[str, Any]]  # name -> evaluate's figures
    slices: Optional[dict[str, Any]] = None

    def __post_init__(self) -> None:
        for name in self.candidates:
            CandidateId.parse(name)

    def ids(self) -> list[CandidateId]:
        return [CandidateId.parse(name) for name in self.candidates]


@dataclass(frozen=True)
class Selection:
    """reports/selection.json: select's verdict on every candidate and the champion."""

    champion: str
    reference: str
    max_f1_drop: float
    speed_key: str
    task: TaskType
    candidates: dict[str, dict[str, Any]]  # name -> figures, quality, f1_drop, eligible, within_budget, qualifies

    def __post_init__(self) -> None:
        for name in (self.champion, self.reference, *self.candidates):
            CandidateId.parse(name)
        if self.champion not in self.candidates or self.reference not in self.candidates:
            raise ValueError("the champion and the reference must be among the candidates")

    @property
    def champion_id(self) -> CandidateId:
        return CandidateId.parse(self.champion)

    @property
    def ours(self) -> dict[str, Any]:
        return self.candidates[self.champion]

    @property
    def ref(self) -> dict[str, Any]:
        return self.candidates[self.reference]

    @property
    def speedup(self) -> float:
        """The champion's speed as a multiple of the reference's, at speed_key, same runtime."""
        return self.ref[self.speed_key] / self.ours[self.speed_key]


@dataclass(frozen=True)
class CompressionReport:
    """reports/compression.json: the candidates as points of the quality/speed/size trade-off."""

    champion: str
    task: TaskType
    speed_key: str
    reference: str
    quality_floor: float
    pareto_front: tuple[str, ...]
    champion_vs_reference: dict[str, Any]  # speedup per latency key, size_ratio, quality_drop_points
    candidates: tuple[dict[str, Any], ...]  # name, path, precision, parameters, size_bytes and select's row


Report = TypeVar("Report")
FILES: dict[type, Path] = {
    ValidationReport: paths.VALIDATION_REPORT,
    EvaluationReport: paths.EVALUATION_REPORT,
    Selection: paths.SELECTION,
    CompressionReport: paths.COMPRESSION_REPORT,
}


def write(report: Any, path: Optional[Path] = None) -> Path:
    """The record as JSON at its place (or `path`), atomically."""
    target = path or FILES[type(report)]
    write_json(target, dataclasses.asdict(report))
    return target


def read(kind: type[Report], path: Optional[Path] = None) -> Report:
    """The record at its place (or `path`), checked: a missing or malformed
    report names the file and the key."""
    source = path or FILES[kind]
    return parse(kind, read_json(source, kind.__name__), str(source))


def read_optional(kind: type[Report], path: Optional[Path] = None) -> Optional[Report]:
    """As read, or None when the stage that writes it has not run here."""
    source = path or FILES[kind]
    return read(kind, source) if Path(source).exists() else None
