"""The table encoder: raw typed rows in, the float matrix a table model takes
out. Training (preprocess) and serving (deploy/) call the same `encode`, with
the same fitted state, so a served row is encoded exactly as a training row.

Numeric columns, yes/no columns (1 or 0, in any spelling: `as_boolean`) and
the parts of each date column (year, month, ... : `date_parts`) are imputed
by the fitted method, then categorical columns are one-hot encoded (an unseen
or missing category is all zeros). A date column carries the format its
training values were written in, so a served row is read the same way. The
imputers' fitted state is plain numbers, never a pickle:

- mean / median / most_frequent: one fill value per numeric column;
- knn: the k nearest training rows by the NaN-aware Euclidean distance, their
  mean (scikit-learn's KNNImputer, uniform weights); the training rows travel
  in the state, base64 float64;
- iterative: scikit-learn's IterativeImputer with its default BayesianRidge,
  which is linear: a sequence of (feature, the features it is predicted from,
  coefficients, intercept), applied in order after a mean fill.

The fit lives in tasks/data/encoding.py; this module has no scikit-learn.
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import pandas as pd

from tasks.core.errors import DistilleryError

ImputeMethod = Literal["mean", "median", "most_frequent", "knn", "iterative"]
DatePart = Literal["year", "month", "day", "weekday", "dayofyear", "hour"]

# Every spelling of yes and no a table uses, after trimming and lower-casing: Y/N, yes/no, true/false, T/F, 1/0.
BOOLEAN_WORDS = {
    **dict.fromkeys(("y", "yes", "true", "t", "1", "1.0"), 1.0),
    **dict.fromkeys(("n", "no", "false", "f", "0", "0.0"), 0.0),
}


def as_boolean(values: pd.Series) -> pd.Series:
    """1.0 for yes, 0.0 for no, NaN for a gap or a value that is neither."""
    return values.astype("string").str.strip().str.lower().map(BOOLEAN_WORDS).astype(np.float64)


# ------------------------------------------------------------ what the gate did to a raw cell
# The validate stage's corrections, applied to a raw cell before encoding. The
# gate (tasks/data/correct.py) and the server (deploy/protocol.py) call these
# same functions, with the settings the model carries (Reading).

# A number, optionally with thousands separators, wrapped in currency or units:
# "65000 $", "€70,000", "12.5 kg", "-3e2".
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"
# Only currency symbols may lead: "PAL0708" or "SKU123" are codes, not numbers.
UNIT_NUMBER = re.compile(rf"^\s*(?P<pre>[$€£¥₹]?)\s*(?P<num>{_NUMBER})\s*(?P<post>[^\d\s]{{0,6}})\s*$")


def parse_numbers(values: pd.Series) -> pd.DataFrame:
    """Classify each value of a text column: plain number, number with a unit or
    currency, or not a number. Returns columns `number` (float or NaN), `kind`
    ('number' | 'unit' | 'text' | 'missing') and `unit`.

    Each distinct value is parsed once, and plain numbers skip the regex, so a
    million rows with few distinct spellings cost little."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    text = pd.Series(uniques, dtype="string")
    number = pd.to_numeric(text, errors="coerce").astype(float)
    kind = pd.Series(np.where(number.notna(), "number", "text"), dtype=object)
    unit = pd.Series(pd.NA, index=text.index, dtype="string")
    needs_regex = number.isna().to_numpy()
    if needs_regex.any():
        parts = text[needs_regex].str.extract(UNIT_NUMBER)
        parsed = pd.to_numeric(parts["num"].str.replace(",", "", regex=False), errors="coerce")
        suffix = (parts["pre"].fillna("") + parts["post"].fillna("")).str.strip()
        number[needs_regex] = parsed.astype(float)
        kind[needs_regex] = np.where(parsed.isna(), "text", np.where(suffix == "", "number", "unit"))
        unit[needs_regex] = suffix.where(parsed.notna() & (suffix != ""))
    missing = codes < 0
    take = np.where(missing, 0, codes)

    def expand(column: pd.Series, fill: object) -> np.ndarray:
        out = column.to_numpy(dtype=object)[take] if len(column) else np.full(len(codes), fill, dtype=object)
        out[missing] = fill
        return out

    return pd.DataFrame(
        {
            "number": expand(number, np.nan).astype(float),
            "kind": expand(kind, "missing"),
            "unit": pd.array(expand(unit, pd.NA), dtype="string"),
        },
        index=values.index,
    )


def numbers_read(parsed: pd.DataFrame, coerce_numeric: bool) -> tuple[pd.Series, pd.Series]:
    """(numbers, refused) of parse_numbers' output: a word, or a number with a
    unit when units are not stripped, is refused (the gate quarantines its row)."""
    refused = parsed["kind"].eq("text") | (parsed["kind"].eq("unit") & (not coerce_numeric))
    return parsed["number"].where(~refused), refused


def missing_token_mask(values: pd.Series, tokens: tuple[str, ...] | frozenset[str]) -> pd.Series:
    """True where a value, trimmed, is one of the text tokens that mean missing ("NA", "n/a", "?")."""
    return values.astype("string").str.strip().isin(set(tokens)).fillna(False).astype(bool)


def fold(value: object) -> str:
    """Case and whitespace folding: ' Human  resources' -> 'human resources'
    (expectations.measures.fold, which may import nothing of the project, is the same)."""
    return " ".join(str(value).split()).casefold()


def fold_synonyms(synonyms: dict[str, str]) -> dict[str, str]:
    """folded variant -> canonical spelling; a canonical spelling's folded form maps to itself."""
    folded = {fold(k): v for k, v in synonyms.items()}
    folded.update({fold(v): v for v in synonyms.values()})
    return folded


def training_spelling(values: pd.Series, categories: tuple[str, ...], synonyms: dict[str, str]) -> pd.Series:
    """Each category as the gate spelt it: a synonym's canonical spelling, else
    the training category it folds to (" MORTGAGE " -> "MORTGAGE" when training
    kept "MORTGAGE"); a value that folds to none stays as sent (unseen)."""
    spelling = {fold(c): c for c in categories}
    spelling.update(fold_synonyms(synonyms))
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    mapped = np.asarray([spelling.get(fold(u), u) for u in uniques], dtype=object)
    out = mapped[np.where(codes < 0, 0, codes)] if len(mapped) else np.full(len(codes), None, dtype=object)
    out[codes < 0] = None
    return pd.Series(out, index=values.index, dtype=object)


@dataclass(frozen=True)
class Reading:
    """What the gate did to raw cells before the encoder was fitted, as plain
    data, so that serving reads a row as training did. A model without one (an
    older model) reads numbers and categories exactly as sent."""

    missing_tokens: tuple[str, ...] = ()  # validate.missing_tokens: trimmed text that means missing
    coerce_numeric: bool = False  # validate.coerce_numeric: "65000 $" is 65000 in a numeric column
    normalise_categories: bool = False  # validate.normalise_categories: case and whitespace folded
    synonyms: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # validate.synonyms: column -> {variant: canonical}


@dataclass(frozen=True)
class DateColumn:
    """How one date column becomes numbers."""

    format: str  # what pd.to_datetime reads its values with: "ISO8601", "%d/%m/%Y", ...
    parts: tuple[DatePart, ...]  # the features it becomes, in order


def as_dates(values: pd.Series, format: str) -> pd.Series:
    """The values as UTC timestamps (NaT for a gap or a value the format does not read).
    Values already parsed (datetime64) pass through."""
    return pd.to_datetime(values, format=format, errors="coerce", utc=True)


def date_parts(values: pd.Series, column: DateColumn) -> np.ndarray:
    """rows x parts, float64, NaN where the date is missing or unreadable."""
    dates = as_dates(values, column.format).dt
    return np.column_stack([getattr(dates, part).to_numpy(dtype=np.float64, na_value=np.nan) for part in column.parts])


@dataclass(frozen=True)
class IterativeStep:
    """One round-robin step: column `feature` := X[:, predictors] @ coef + intercept, clipped."""

    feature: int  # index into the numeric columns
    predictors: tuple[int, ...]
    coef: tuple[float, ...]
    intercept: float


@dataclass(frozen=True)
class Imputer:
    method: ImputeMethod
    fill_values: dict[str, float]  # per numeric column: the statistic (mean/median/mode; knn: the mean)
    neighbors: int = 0  # knn: k
    donors: Optional[str] = None  # knn: the training rows of the numeric columns, base64 float64 (NaN = missing)
    steps: tuple[IterativeStep, ...] = ()  # iterative: the fitted sequence, in order
    low: tuple[float, ...] = ()  # iterative: per column, the clip range of imputed values (-inf/inf: none)
    high: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.method == "knn" and (self.neighbors < 1 or self.donors is None):
            raise ValueError("a knn imputer needs neighbors >= 1 and its donors")

    def impute(self, x: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
        """`x` (rows x numeric columns, NaN = missing) with every gap filled."""
        x = np.array(x, dtype=np.float64)
        if x.size == 0:
            return x
        fill = np.array([self.fill_values[c] for c in columns], dtype=np.float64)
        if self.method == "knn":
            x = knn_impute(x, self.donor_matrix(len(columns)), self.neighbors, fill)
        elif self.method == "iterative":
            x = self._iterative(x, fill)
        # The statistic for whatever is left (every gap, for the simple methods).
        return np.where(np.isnan(x), fill, x)

    def _iterative(self, x: np.ndarray, fill: np.ndarray) -> np.ndarray:
        missing = np.isnan(x)
        filled = np.where(missing, fill, x)
        for step in self.steps:
            rows = missing[:, step.feature]
            if rows.any():
                value = filled[np.ix_(rows, step.predictors)] @ np.asarray(step.coef) + step.intercept
                filled[rows, step.feature] = np.clip(value, self.low[step.feature], self.high[step.feature])
        return filled

    @functools.cached_property
    def _donors(self) -> np.ndarray:
        return np.frombuffer(base64.b64decode(self.donors or ""), dtype="<f8")

    def donor_matrix(self, width: int) -> np.ndarray:
        flat = self._donors
        if width == 0 or flat.size % width:
            raise DistilleryError(f"the knn imputer's donors ({flat.size} values) do not fit {width} numeric columns")
        return flat.reshape(-1, width)


def encode_matrix(x: np.ndarray) -> str:
    """A float64 matrix as the base64 text an Imputer carries."""
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f8").tobytes()).decode("ascii")


def nan_euclidean(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairwise distances over the coordinates both rows have, scaled up by
    (all coordinates / present ones): scikit-learn's nan_euclidean_distances.
    NaN where two rows share no coordinate."""
    px, py = ~np.isnan(x), ~np.isnan(y)
    x0, y0 = np.where(px, x, 0.0), np.where(py, y, 0.0)
    # sum over shared coordinates of (a - b)^2 = a^2 [b present] - 2ab + b^2 [a present]
    squared = (x0 * x0) @ py.T - 2 * x0 @ y0.T + px @ (y0 * y0).T
    present = px.astype(np.float64) @ py.T.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        distances = np.sqrt(np.maximum(squared, 0.0) * x.shape[1] / present)
    distances[present == 0] = np.nan
    return distances


def knn_impute(x: np.ndarray, donors: np.ndarray, k: int, fallback: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Each gap of `x` := the mean of that column over the k nearest donors that
    have it (scikit-learn's KNNImputer, uniform weights). A row that shares no
    coordinate with any such donor gets `fallback` (the column's training mean)."""
    out = x.copy()
    donor_has = ~np.isnan(donors)
    rows = np.flatnonzero(np.isnan(x).any(axis=1))
    for start in range(0, len(rows), chunk):  # bounded memory: chunk x donors distances at a time
        part = rows[start : start + chunk]
        distances = nan_euclidean(x[part], donors)
        for col in range(x.shape[1]):
            receivers = np.flatnonzero(np.isnan(x[part, col]))
            candidates = np.flatnonzero(donor_has[:, col])
            if receivers.size == 0:
                continue
            if candidates.size == 0:
                out[part[receivers], col] = fallback[col]
                continue
            d = distances[np.ix_(receivers, candidates)]
            n = min(k, candidates.size)
            nearest = np.argpartition(d, n - 1, axis=1)[:, :n]
            nearest_d = np.take_along_axis(d, nearest, axis=1)
            values = donors[candidates[nearest], col]
            weights = (~np.isnan(nearest_d)).astype(np.float64)
            with np.errstate(invalid="ignore"):
                mean = (values * weights).sum(axis=1) / weights.sum(axis=1)
            out[part[receivers], col] = np.where(np.isnan(nearest_d).all(axis=1), fallback[col], mean)
    return out


def number_columns(
    numeric: tuple[str, ...], booleans: tuple[str, ...], dates: dict[str, DateColumn]
) -> tuple[str, ...]:
    """The names of the imputed block's columns, in order: numbers, yes/no, then each date's parts."""
    return (*numeric, *booleans, *(f"{c}.{part}" for c, column in dates.items() for part in column.parts))


def number_block(
    rows: pd.DataFrame, numeric: tuple[str, ...], booleans: tuple[str, ...], dates: dict[str, DateColumn]
) -> np.ndarray:
    """The columns that become numbers, as numbers (NaN = missing): what the imputer is fitted on and fills."""
    blocks = (
        [np.column_stack([pd.to_numeric(rows[c], errors="coerce").to_numpy(np.float64) for c in numeric])]
        if numeric
        else []
    )
    blocks += [as_boolean(rows[c]).to_numpy()[:, None] for c in booleans]
    blocks += [date_parts(rows[c], column) for c, column in dates.items()]
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(rows), 0))


@dataclass(frozen=True)
class TableEncoder:
    numeric: tuple[str, ...]  # numeric feature columns, in model order
    categorical: dict[str, tuple[str, ...]]  # categorical column -> its training categories, in model order
    imputer: Imputer  # fills the numbers, the yes/no columns and the date parts (number_columns)
    booleans: tuple[str, ...] = ()  # yes/no columns in any spelling, as 1/0 (as_boolean)
    dates: dict[str, DateColumn] = field(default_factory=dict)  # date column -> its format and parts
    reading: Optional[Reading] = None  # the gate's corrections of raw cells (None: cells are read as sent)

    @property
    def columns(self) -> tuple[str, ...]:
        """The raw columns a row must carry (null for a gap)."""
        return (*self.numeric, *self.booleans, *self.dates, *self.categorical)

    @property
    def imputed(self) -> tuple[str, ...]:
        """The imputed block's columns: the first features the model sees."""
        return number_columns(self.numeric, self.booleans, self.dates)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The encoded features, as the model sees them."""
        return (*self.imputed, *(f"{c}={v}" for c, values in self.categorical.items() for v in values))

    @property
    def width(self) -> int:
        return len(self.imputed) + sum(len(v) for v in self.categorical.values())

    def read(self, rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
        """Raw rows as the gate left the training rows (self.reading): missing
        tokens become gaps, numbers written as text (with their unit, where the
        gate stripped units) numbers, categories the training spelling. Also,
        per numeric column, the cells the gate would have quarantined (a word,
        a unit it kept, an infinite number): the caller refuses those rows."""
        reading = self.reading
        if reading is None:
            return rows, {}
        rows = rows.copy()
        refused = {}
        for col in self.columns:
            values = rows[col]
            if reading.missing_tokens and not pd.api.types.is_numeric_dtype(values):
                values = values.mask(missing_token_mask(values, reading.missing_tokens))
            if col in self.numeric:
                if pd.api.types.is_numeric_dtype(values):
                    values, bad = values.astype(np.float64), pd.Series(False, index=values.index)
                else:
                    values, bad = numbers_read(parse_numbers(values), reading.coerce_numeric)
                infinite = np.isinf(values)
                refused[col], values = bad | infinite, values.where(~infinite)
            elif col in self.categorical and (reading.normalise_categories or col in reading.synonyms):
                values = training_spelling(values, self.categorical[col], reading.synonyms.get(col, {}))
            rows[col] = values
        return rows, refused

    def unseen(self, rows: pd.DataFrame) -> list[list[str]]:
        """Per row, the categorical columns whose value training never saw (a
        gap is not unseen): encode's all-zeros one-hot, which the server flags."""
        if not self.categorical:
            return [[] for _ in range(len(rows))]
        names = np.asarray(list(self.categorical), dtype=object)
        flags = np.column_stack(
            [
                (rows[c].notna() & ~rows[c].astype("string").isin(list(categories)).fillna(False)).to_numpy(bool)
                for c, categories in self.categorical.items()
            ]
        )
        return [names[row].tolist() for row in flags]

    def encode(self, rows: pd.DataFrame) -> np.ndarray:
        """Raw typed rows -> the float32 matrix the model takes: numbers, yes/no
        and date parts with their gaps imputed, categories one-hot. Training and
        serving both call this."""
        missing = [c for c in self.columns if c not in rows.columns]
        if missing:
            raise DistilleryError(f"input rows lack the feature columns {missing}")
        blocks = []
        if self.imputed:
            numbers = number_block(rows, self.numeric, self.booleans, self.dates)
            blocks.append(self.imputer.impute(numbers, self.imputed).astype(np.float32))
        for col, categories in self.categorical.items():
            values = rows[col].astype("string").fillna("\x00").to_numpy(dtype=object)
            blocks.append((values[:, None] == np.asarray(categories, dtype=object)[None, :]).astype(np.float32))
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(rows), 0), np.float32)
