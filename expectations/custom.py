"""The project's own GX expectations. Importing this module registers them, so a
suite JSON can name them by their snake_case type."""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd
from great_expectations.execution_engine import ExecutionEngine, PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnAggregateExpectation
from great_expectations.expectations.metrics import ColumnAggregateMetricProvider, column_aggregate_value


class ColumnValueCountsMin(ColumnAggregateMetricProvider):
    """The count of the rarest distinct value in a column."""

    metric_name = "column.value_counts_min"

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> int:
        counts = column.value_counts()
        return int(counts.min()) if len(counts) else 0


class ExpectColumnValueCountsToBeAtLeast(ColumnAggregateExpectation):
    """Expect every distinct value of the column (every class) to occur at least
    `min_count` times: too few examples of a class cannot be learned or tested."""

    min_count: int

    metric_dependencies = ("column.value_counts_min",)
    success_keys = ("min_count",)

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: Optional[dict] = None,
        execution_engine: Optional[ExecutionEngine] = None,
    ) -> dict:
        observed = metrics["column.value_counts_min"]
        return {"success": observed >= self.min_count, "result": {"observed_value": observed}}
