"""The project's own GX expectations. Importing this module registers them, so a
suite JSON can name them by their snake_case type.

- expect_column_value_counts_to_be_at_least: every class has enough examples;
- expect_column_imbalance_ratio_to_be_at_most: max count / min count;
- expect_column_normalized_entropy_to_be_at_least: class entropy / log(k);
- expect_table_near_duplicate_fraction_to_be_at_most: rows that repeat an
  earlier row once numbers are rounded and text folded;
- expect_table_columns_missing_fraction_to_be_at_most: no column (nearly) empty.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

import pandas as pd
from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.core.suite_parameters import SuiteParameterDict
from great_expectations.execution_engine import ExecutionEngine, PandasExecutionEngine
from great_expectations.expectations.expectation import BatchExpectation, ColumnAggregateExpectation
from great_expectations.expectations.metrics import ColumnAggregateMetricProvider, column_aggregate_value
from great_expectations.expectations.metrics.metric_provider import metric_value
from great_expectations.expectations.metrics.table_metric_provider import TableMetricProvider

from expectations import measures


def readable(sentence: str) -> classmethod:
    """The line Data Docs print for an expectation, `$name` standing for its
    settings (GX prints a custom expectation without one as raw
    `expect_...(**{...})`). Made per class: GX registers the renderers a class
    itself defines."""
    from great_expectations.render import LegacyRendererType, RenderedStringTemplateContent
    from great_expectations.render.renderer.renderer import renderer

    def _prescriptive_renderer(cls, configuration=None, result=None, runtime_configuration=None, **kwargs):
        params = dict(configuration.kwargs) if configuration else {}
        styling = (runtime_configuration or {}).get("styling")
        return [
            RenderedStringTemplateContent(
                content_block_type="string_template",
                string_template={"template": sentence, "params": params, "styling": styling},
            )
        ]

    return classmethod(renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)(_prescriptive_renderer))


class ColumnValueCounts(ColumnAggregateMetricProvider):
    """Rows per class. With `value_set`, only those classes count (a stray label
    is not a class, so it cannot fail a check on them), and a declared class with
    no rows counts as 0."""

    metric_name = "column.class_counts"
    value_keys = ("value_set",)

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, value_set: Optional[list] = None, **kwargs: Any) -> dict:
        counts = column.value_counts()
        if value_set is not None:
            counts = counts.reindex(list(value_set), fill_value=0)
        return {str(label): int(n) for label, n in counts.items()}


class ColumnClassBalance(ColumnAggregateMetricProvider):
    """Imbalance ratio, normalised Gini and normalised entropy of a label column."""

    metric_name = "column.class_balance"

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> dict:
        balance = measures.class_balance(column)
        return {k: balance[k] for k in ("imbalance_ratio", "gini", "normalized_entropy", "classes")}


class TableNearDuplicateFraction(TableMetricProvider):
    """Share of rows that repeat an earlier one after rounding and folding."""

    metric_name = "table.near_duplicate_fraction"
    value_keys = ("decimals", "ignore_columns")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics, runtime_configuration):
        df, _, _ = execution_engine.get_compute_domain(metric_domain_kwargs, domain_type=MetricDomainTypes.TABLE)
        ignore = [c for c in (metric_value_kwargs.get("ignore_columns") or []) if c in df.columns]
        content = df.drop(columns=ignore)
        if content.empty:
            return 0.0
        near = measures.near_duplicate_rows(content, int(metric_value_kwargs.get("decimals") or 2))
        exact = measures.duplicate_rows(content)
        return float((near | exact).mean())


class TableColumnsMissingFraction(TableMetricProvider):
    """The column with the largest share of missing values, and that share."""

    metric_name = "table.columns_missing_fraction"
    value_keys = ("ignore_columns",)

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics, runtime_configuration):
        df, _, _ = execution_engine.get_compute_domain(metric_domain_kwargs, domain_type=MetricDomainTypes.TABLE)
        ignore = set(metric_value_kwargs.get("ignore_columns") or [])
        fractions = df[[c for c in df.columns if c not in ignore]].isna().mean()
        if fractions.empty or df.empty:
            return {"column": None, "fraction": 0.0}
        return {"column": str(fractions.idxmax()), "fraction": float(fractions.max())}


class ExpectColumnValueCountsToBeAtLeast(ColumnAggregateExpectation):
    """Expect every class to occur at least `min_count` times: too few examples of
    a class cannot be learned or tested. `value_set` names the classes; without
    it, every distinct value is a class."""

    min_count: int
    value_set: Union[list, SuiteParameterDict, None] = None  # a list, or {"$PARAMETER": name}

    _prescriptive_renderer = readable("every class of $column must have at least $min_count rows")
    metric_dependencies = ("column.class_counts",)
    success_keys = ("min_count", "value_set")

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: Optional[dict] = None,
        execution_engine: Optional[ExecutionEngine] = None,
    ) -> dict:
        counts = metrics["column.class_counts"]
        observed = min(counts.values()) if counts else 0
        # The classes short of rows, rarest first: what the gate's message names.
        short = dict(sorted(((c, n) for c, n in counts.items() if n < self.min_count), key=lambda item: item[1]))
        return {
            "success": observed >= self.min_count,
            "result": {"observed_value": observed, "details": {"too_few": short, "min_count": self.min_count}},
        }


class ExpectColumnImbalanceRatioToBeAtMost(ColumnAggregateExpectation):
    """Expect max class count / min class count to be at most `max_ratio`."""

    max_ratio: float

    _prescriptive_renderer = readable("$column: largest class / smallest class must be at most $max_ratio")
    metric_dependencies = ("column.class_balance",)
    success_keys = ("max_ratio",)

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: Optional[dict] = None,
        execution_engine: Optional[ExecutionEngine] = None,
    ) -> dict:
        ratio = metrics["column.class_balance"]["imbalance_ratio"]
        return {"success": ratio is not None and ratio <= self.max_ratio, "result": {"observed_value": ratio}}


class ExpectColumnNormalizedEntropyToBeAtLeast(ColumnAggregateExpectation):
    """Expect the class distribution's entropy / log(k) to be at least `min_value`
    (1 = perfectly balanced, 0 = one class)."""

    min_value: float

    _prescriptive_renderer = readable("$column: class entropy / log(classes) must be at least $min_value")
    metric_dependencies = ("column.class_balance",)
    success_keys = ("min_value",)

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: Optional[dict] = None,
        execution_engine: Optional[ExecutionEngine] = None,
    ) -> dict:
        entropy = metrics["column.class_balance"]["normalized_entropy"]
        return {"success": entropy is not None and entropy >= self.min_value, "result": {"observed_value": entropy}}


class ExpectTableNearDuplicateFractionToBeAtMost(BatchExpectation):
    """Expect at most `max_fraction` of rows to be (near-)duplicates of an earlier
    row: numbers rounded to `decimals`, text folded, `ignore_columns` left out."""

    max_fraction: float
    decimals: int = 2
    ignore_columns: list[str] = []

    _prescriptive_renderer = readable(
        "at most $max_fraction of the rows may repeat an earlier row "
        "(numbers rounded to $decimals decimals, text folded)"
    )
    metric_dependencies = ("table.near_duplicate_fraction",)
    domain_keys: ClassVar[tuple[str, ...]] = ("row_condition", "condition_parser")
    success_keys = ("max_fraction", "decimals", "ignore_columns")

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: Optional[dict] = None,
        execution_engine: Optional[ExecutionEngine] = None,
    ) -> dict:
        fraction = metrics["table.near_duplicate_fraction"]
        return {"success": fraction <= self.max_fraction, "result": {"observed_value": fraction}}


class ExpectTableColumnsMissingFractionToBeAtMost(BatchExpectation):
    """Expect no column (outside `ignore_columns`) to miss more than
    `max_fraction` of its values: an all-empty column carries no information
    and usually means a broken export upstream."""

    max_fraction: float
    ignore_columns: list[str] = []

    _prescriptive_renderer = readable("no column may miss more than $max_fraction of its values")
    metric_dependencies = ("table.columns_missing_fraction",)
    domain_keys: ClassVar[tuple[str, ...]] = ("row_condition", "condition_parser")
    success_keys = ("max_fraction", "ignore_columns")

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: Optional[dict] = None,
        execution_engine: Optional[ExecutionEngine] = None,
    ) -> dict:
        worst = metrics["table.columns_missing_fraction"]
        return {"success": worst["fraction"] <= self.max_fraction, "result": {"observed_value": worst}}
