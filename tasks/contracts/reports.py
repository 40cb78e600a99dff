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

    model: str  # teacher | student | teacher_pruned | student_pruned | boosted (tables: gradient-boosted trees)
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
        """The trained model it comes from: teacher, student or boosted."""
        return self.model.removesuffix(PRUNED)

    @property
    def boosted(self) -> bool:
        """The gradient-boosted trees (tables), not a network: no compression step led to it."""
        return self.base == BOOSTED_MODEL

    def lineage(self) -> list["CandidateId"]:
        """The compression steps that lead from the fp32 teacher to this
        candidate: teacher, then student, then pruned, then this precision.
        The boosted model is its own lineage."""
        if self.boosted:
            return [self]
        steps = [REFERENCE]
        if self.base != REFERENCE.model:
            steps.append(CandidateId(self.base, "fp32"))
        if self.pruned:
            steps.append(CandidateId(self.model, "fp32"))
        steps.append(self)
        return list(dict.fromkeys(steps))

    def __str__(self) -> str:
        return self.name


BOOSTED_MODEL = "boosted"
REFERENCE = CandidateId("teacher", "fp32")  # every candidate's speed is compared with it, in the same runtime
BOOSTED = CandidateId(BOOSTED_MODEL, "fp32")  # tables: the gradient-boosted candidate and quality baseline
TRIVIAL, BOOSTED_BASELINE = "trivial", "boosted"  # the baselines' keys


@dataclass(frozen=True)
class Baseline:
    """What the champion must beat (trivial) or come close to (boosted), scored
    on the same test split by the task's quality metric."""

    name: str  # trivial | boosted
    model: str  # what it is, e.g. "DummyClassifier(strategy='most_frequent')" or "boosted.fp32"
    quality: float  # macro-F1, or R^2 for regression
    metrics: dict[str, float]  # a few more of the task's figures (accuracy, r2, rmse, ...)


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
    baselines: dict[str, Baseline] = dataclasses.field(default_factory=dict)  # trivial, and boosted on tables

    def __post_init__(self) -> None:
        for name in self.candidates:
            CandidateId.parse(name)

    def ids(self) -> list[CandidateId]:
        return [CandidateId.parse(name) for name in self.candidates]


@dataclass(frozen=True)
class Selection:
    """reports/selection.json: select's verdict on every candidate and the champion."""

    champion: str
    reference: str  # the speed reference (teacher.fp32): speed-ups are measured against it
    best: str  # the candidate of highest quality: the quality budget is measured against it
    max_quality_drop: float
    speed_key: str
    task: TaskType
    # name -> figures, quality, quality_drop (below the best), vs_boosted, eligible, within_budget, qualifies
    candidates: dict[str, dict[str, Any]]
    baselines: dict[str, Baseline] = dataclasses.field(default_factory=dict)  # trivial, and boosted on tables

    def __post_init__(self) -> None:
        for name in (self.champion, self.reference, self.best, *self.candidates):
            CandidateId.parse(name)
        if any(n not in self.candidates for n in (self.champion, self.reference, self.best)):
            raise ValueError("the champion, the reference and the best must be among the candidates")

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
    best: str  # the quality floor is the best candidate's quality less select.max_quality_drop
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
