"""Measure the four data-quality dimensions and apply the corrections that
params.yaml allows. Nothing is dropped here: a row that cannot be kept is
returned in `row_issues` with its reason, and the gate quarantines it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tasks.contracts.dataset import LABEL, ROW_ID
from tasks.contracts.encoder import Reading, as_boolean, as_dates, missing_token_mask, numbers_read
from tasks.core.params import ValidateParams
from tasks.core.task import IMAGE, TABLE, task_of
from tasks.data import quality

DUPLICATE_OF = "duplicate of row "  # + the row kept: a quarantined exact copy loses no information

TEXTUAL_TYPES = ("categorical", "text")
FEATURE_TYPES = ("numeric", "boolean", "datetime", "categorical")  # the column types the model takes


@dataclass
class Corrected:
    table: pd.DataFrame  # typed and corrected; `label` holds the target
    report: dict[str, Any]  # the four dimensions plus the corrections applied
    row_issues: dict[int, list[str]] = field(default_factory=dict)  # row_id -> reasons to quarantine
    column_types: dict[str, str] = field(default_factory=dict)
    date_formats: dict[str, str] = field(default_factory=dict)  # datetime column -> the format it was read with
    reading: Reading | None = None  # the corrections of raw cells, as serving must replay them
    picture_flags: pd.DataFrame | None = None  # a folder of pictures: quality.picture_flags of those read


def _flag(issues: dict[int, list[str]], row_ids: pd.Series, reason: str | pd.Series) -> None:
    reasons = reason if isinstance(reason, pd.Series) else pd.Series(reason, index=row_ids.index)
    for row_id, why in zip(row_ids.to_numpy(), reasons.to_numpy()):
        issues.setdefault(int(row_id), []).append(str(why))


def _parsed(table: pd.DataFrame, col: str) -> pd.DataFrame | None:
    """parse_numbers of a text column (None for a column already numeric)."""
    return None if pd.api.types.is_numeric_dtype(table[col]) else quality.parse_numbers(table[col])


NEARLY_EMPTY = 0.95  # a column missing this share of its values is reported and ignored, not fatal
MIN_ID_ROWS = 20  # fewer rows than this prove nothing about a column being unique
ID_NAME = re.compile(r"(?i)^(id|pid|uuid|guid|key|index|order|rownames|row_?id|row)$|[_ .-]id$|[a-z]Id$|[a-z]ID$")


def looks_like_id(name: str, values: pd.Series) -> bool:
    """Unique integers that count rows (a contiguous range) or are named like
    a key (PID, customer_id), or unique one-word strings: an identity, which
    says nothing about the target and must not be a feature."""
    present = values.dropna()
    if len(present) < MIN_ID_ROWS or present.nunique() != len(present):
        return False
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        if (numbers != numbers.round()).any():  # unique floats are measurements
            return False
        return bool(numbers.max() - numbers.min() + 1 == len(numbers) or ID_NAME.search(name))
    return bool(present.astype(str).str.fullmatch(r"\S+").all())


def infer_types(
    table: pd.DataFrame, declared: dict[str, str], target: str, parsed: dict[str, pd.DataFrame | None]
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(types, observed, why): declared types win; the rest are read off the
    values, each with the reason a user can check (reports/data_quality.json).
    A column that is mostly numbers (some with units, a few words) is numeric:
    the words are what the gate must report, not a reason to treat the column
    as text."""
    types, observed, why = {}, {}, {}
    for col in table.columns:
        if col in (ROW_ID, target):
            continue
        seen = observed[col] = quality.observed_type(table[col], parsed[col])
        types[col], why[col] = _inferred(col, table[col], seen, parsed[col], declared)
    return types, observed, why


def _inferred(
    col: str, values: pd.Series, seen: str, parsed: pd.DataFrame | None, declared: dict[str, str]
) -> tuple[str, str]:
    if col in declared:
        return declared[col], "declared in data.columns"
    missing = float(values.isna().mean()) if len(values) else 1.0
    if seen == "empty" or missing >= NEARLY_EMPTY:
        return "ignore", f"{missing:.1%} of its values are missing (>= {NEARLY_EMPTY:.0%}): reported and ignored"
    if seen == "boolean":  # before ids and codes: two values, spelt any way
        return seen, "every value spells yes or no (Y/N, yes/no, true/false, T/F, 1/0): read as 1/0"
    if seen == "datetime":  # before ids: unique timestamps are dates, not keys
        found = quality.date_format(values.dropna())
        return seen, f"its values read as dates ({found}): year, month, day and weekday become features"
    if looks_like_id(col, values):
        return "id", "every value is unique (a row number or a key): not a feature"
    if seen == "mixed":
        assert parsed is not None  # a mixed column is text with numbers in it
        kinds = parsed["kind"]
        numeric = kinds.isin(["number", "unit"]).sum() / max(1, (kinds != "missing").sum())
        if numeric >= 0.8:
            return (
                "numeric",
                f"{numeric:.0%} of its values are numbers (with one unit at most); the rest are row issues",
            )
        return "categorical", f"only {numeric:.0%} of its values are numbers"
    reasons = {
        "numeric": "its values are numbers (with one unit or currency at most)",
        "categorical": "few distinct values, or codes with letters in them (1Fam, 2Story)",
        "text": "many distinct words",
    }
    return seen, reasons.get(seen, seen)


def correct_table(
    raw: pd.DataFrame, target: str, declared: dict[str, str], task: str, params: ValidateParams
) -> Corrected:
    """The tabular path: missing tokens, numbers with units, yes/no in any
    spelling (1/0), dates (timestamps), category variants, outliers, duplicates
    and near-duplicates, class balance. `declared` holds the
    declared column types (the rest are inferred)."""
    issues: dict[int, list[str]] = {}
    table = raw.copy()
    corrections: dict[str, Any] = {}
    row_ids = table[ROW_ID]

    # Missing tokens first, so "." and "NA" count as missing everywhere below.
    token_counts = {}
    for col in table.columns:
        if col != ROW_ID and not pd.api.types.is_numeric_dtype(table[col]):
            is_token = missing_token_mask(table[col], params.missing_tokens)
            if is_token.any():
                token_counts[col] = int(is_token.sum())
                table[col] = table[col].mask(is_token)
    corrections["missing_tokens"] = token_counts

    parsed = {col: _parsed(table, col) for col in table.columns if col not in (ROW_ID, target)}
    types, observed, why = infer_types(table, declared, target, parsed)
    representation: dict[str, Any] = {}
    coerced, variants_fixed, date_formats = {}, {}, {}
    for col, declared in types.items():
        entry: dict[str, Any] = {"declared": declared, "observed": observed[col], "why": why[col]}
        if declared == "numeric":
            entry.update(_numeric_column(table, col, parsed[col], params, issues, coerced))
        elif declared == "boolean":
            entry.update(_read_column(table, col, as_boolean(table[col]), "yes or no", issues))
        elif declared == "datetime":
            date_formats[col] = quality.date_format(table[col].dropna()) or "ISO8601"
            entry["format"] = date_formats[col]
            entry.update(_read_column(table, col, as_dates(table[col], date_formats[col]), "a date", issues))
        elif declared in TEXTUAL_TYPES:
            entry.update(_textual_column(table, col, params, variants_fixed, declared == "categorical"))
        representation[col] = entry
    corrections["coerced_numeric"] = coerced
    corrections["categories_normalised"] = variants_fixed

    # The target becomes `label`: a number for regression (units stripped, words
    # quarantined), else a class name with the same folding and synonyms.
    target_entry: dict[str, Any] = {"declared": "target", "observed": quality.observed_type(table[target])}
    regression = task_of(task).regression
    if regression:
        target_entry.update(_numeric_column(table, target, _parsed(table, target), params, issues, coerced))
    else:
        target_entry.update(_textual_column(table, target, params, variants_fixed, True))
    representation[target] = target_entry
    table = table.rename(columns={target: LABEL})
    no_label = table[LABEL].isna()
    _flag(issues, row_ids[no_label & ~row_ids.isin(list(issues))], f"{target}: label missing")

    uniqueness = _uniqueness(table, types, params, issues)
    corrections["duplicates_quarantined"] = uniqueness["duplicate_rows"] if params.drop_duplicates else 0
    report = {
        "kind": TABLE.name,
        "rows": int(len(table)),
        "representation": {"columns": representation},
        "completeness": quality.completeness(table.drop(columns=[ROW_ID])),
        "uniqueness": uniqueness,
        "balance": quality.target_distribution(table.loc[~no_label, LABEL])
        if regression
        else quality.class_balance(table.loc[~no_label, LABEL]),
        "corrections": corrections,
    }
    reading = Reading(
        missing_tokens=tuple(params.missing_tokens),
        coerce_numeric=params.coerce_numeric,
        normalise_categories=params.normalise_categories,
        synonyms={c: dict(v) for c, v in params.synonyms.items() if c in types and c != target},
    )
    return Corrected(
        table=table, report=report, row_issues=issues, column_types=types, date_formats=date_formats, reading=reading
    )


def _read_column(table: pd.DataFrame, col: str, read: pd.Series, what: str, issues: dict[int, list[str]]) -> dict:
    """The column as `read` (1/0 or timestamps): a value it could not read is a row issue naming it."""
    bad = table[col].notna() & read.isna()
    if bad.any():
        _flag(issues, table.loc[bad, ROW_ID], table.loc[bad, col].map(lambda v: f"{col}: {v!r} is not {what}"))
    entry: dict[str, Any] = {
        "read": int(read.notna().sum()),
        "not_read": int(bad.sum()),
        "examples_not_read": table.loc[bad, col].astype(str).unique()[:5].tolist(),
    }
    table[col] = read
    if read.notna().any():
        entry["range"] = [str(read.min()), str(read.max())]
    return entry


def _numeric_column(
    table: pd.DataFrame,
    col: str,
    parsed: pd.DataFrame | None,
    params: ValidateParams,
    issues: dict[int, list[str]],
    coerced: dict[str, int],
) -> dict[str, Any]:
    values = table[col]
    if parsed is None:
        numbers = values.astype(float)
        entry: dict[str, Any] = {"numbers": int(values.notna().sum()), "with_units": 0, "not_numbers": 0}
    else:
        kinds = parsed["kind"].value_counts()
        numbers, bad = numbers_read(parsed, params.coerce_numeric)
        entry = {
            "numbers": int(kinds.get("number", 0)),
            "with_units": int(kinds.get("unit", 0)),
            "units": sorted(parsed["unit"].dropna().unique().tolist()),
            "not_numbers": int(parsed["kind"].eq("text").sum()),
            "examples_not_numbers": values[parsed["kind"].eq("text")].astype(str).unique()[:5].tolist(),
        }
        if bad.any():
            _flag(issues, table.loc[bad, ROW_ID], values[bad].map(lambda v: f"{col}: {v!r} is not a number"))
        if params.coerce_numeric and entry["with_units"]:
            coerced[col] = entry["with_units"]
    # "inf" reads as a number, but no statistic, imputer or loss survives one: a row issue like a word.
    infinite = np.isinf(numbers)
    if infinite.any():
        _flag(issues, table.loc[infinite, ROW_ID], values[infinite].map(lambda v: f"{col}: {v!r} is not finite"))
        numbers = numbers.where(~infinite)
    entry["not_finite"] = int(infinite.sum())
    table[col] = numbers
    mask = quality.outliers(numbers, params.outlier_method, params.outlier_threshold)
    entry["outliers"] = int(mask.sum())
    entry["outlier_rows"] = table.loc[mask, ROW_ID].head(20).tolist()
    if numbers.notna().any():
        entry["range"] = [float(numbers.min()), float(numbers.max())]
    return entry


def _textual_column(
    table: pd.DataFrame, col: str, params: ValidateParams, fixed: dict[str, int], normalise: bool
) -> dict[str, Any]:
    synonyms = params.synonyms.get(col, {})
    entry: dict[str, Any] = {
        "distinct": int(table[col].nunique()),
        "variants": quality.category_variants(table[col], synonyms),
        "near_duplicate_values": quality.near_duplicate_values(table[col], params.near_duplicate_ratio),
    }
    if normalise and (params.normalise_categories or synonyms):
        before = table[col]
        table[col], changed = quality.normalise_categories(before, synonyms)
        if changed:
            fixed[col] = changed
            renamed = pd.DataFrame({"from": before, "to": table[col]}).dropna().drop_duplicates()
            renamed = renamed[renamed["from"] != renamed["to"]].head(50)
            entry["renamed"] = dict(zip(renamed["from"].astype(str), renamed["to"].astype(str)))
    return entry


def _uniqueness(
    table: pd.DataFrame, types: dict[str, str], params: ValidateParams, issues: dict[int, list[str]]
) -> dict:
    """Exact duplicates (all columns but row_id), duplicates on the key columns,
    near-duplicate rows. Identifiers are left out of the row comparison:
    two records that differ only by their sample number are the same record."""
    content = [c for c in table.columns if c != ROW_ID and types.get(c) != "id"]
    exact = quality.duplicate_rows(table, content)
    if params.drop_duplicates and exact.any():
        first_id = table.groupby(content, dropna=False, sort=False)[ROW_ID].transform("first")
        _flag(issues, table.loc[exact, ROW_ID], first_id[exact].map(lambda r: f"{DUPLICATE_OF}{r}"))
    keys = [k for k in params.duplicate_keys if k in table.columns]
    near = quality.near_duplicate_rows(table[content], params.near_duplicate_decimals)
    return {
        "duplicate_rows": int(exact.sum()),
        "duplicate_rows_on_keys": int(quality.duplicate_rows(table, keys).sum()) if keys else None,
        "keys": keys,
        "near_duplicate_rows": int(near.sum()),
        "near_duplicate_fraction": float(near.mean()) if len(table) else 0.0,
    }


UNREADABLE = "unreadable image"  # + the file and the decoder's reason
DECODE_ERROR = "decode_error"  # a folder of pictures: the decoder's reason per file ("" = read)
EXAMPLES = 5  # files named per issue in data_quality.json


LABEL_CONFLICT = "label conflict"  # + the classes and files: one picture filed under two classes


def label_conflicts(table: pd.DataFrame, images: np.ndarray) -> pd.DataFrame:
    """The rows whose picture (the same decoded pixels) is filed under more than one class: every copy,
    since which class is right cannot be told (`row_id`, `reason` naming the classes and the files)."""
    if table.empty:
        return pd.DataFrame({ROW_ID: pd.Series(dtype=np.int64), "reason": pd.Series(dtype=object)})
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    groups = pd.DataFrame(
        {
            ROW_ID: table[ROW_ID].to_numpy(),
            # A digest of each picture's pixels, not the pixels: 100,000 pictures stay a few MB here.
            "pixels": [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat],
            "class_name": table["class_name"].astype(str).to_numpy(),
            "file": table["file"].astype(str).to_numpy() if "file" in table else table[ROW_ID].astype(str).to_numpy(),
        }
    )
    found = groups[groups.groupby("pixels")["class_name"].transform("nunique") > 1]
    reasons = {
        pixels: f"{LABEL_CONFLICT}: the same picture is filed under classes {sorted(set(g['class_name']))} "
        f"({', '.join(g['file'].head(EXAMPLES))})"
        for pixels, g in found.groupby("pixels")
    }
    return pd.DataFrame({ROW_ID: found[ROW_ID].to_numpy(), "reason": [reasons[p] for p in found["pixels"]]})


def correct_images(table: pd.DataFrame, images: np.ndarray, params: ValidateParams) -> Corrected:
    """The image path: files that could not be decoded; size, channels and value
    range; missing pixels; exact and perceptual-hash near-duplicates; class balance."""
    issues: dict[int, list[str]] = {}
    failed = table[DECODE_ERROR].astype(str).ne("").to_numpy() if DECODE_ERROR in table else np.zeros(len(table), bool)
    if failed.any():
        bad = table.loc[failed]
        _flag(issues, bad[ROW_ID], UNREADABLE + " " + bad["file"].astype(str) + ": " + bad[DECODE_ERROR].astype(str))
    readable = ~failed
    # Duplicates among the pictures read (an unreadable file's zeros say nothing); colour is hashed as its mean.
    gray = quality.grayscale(images)
    dupes = (
        quality.image_duplicates(gray[readable])
        if readable.any()
        else {"duplicate_images": 0, "near_duplicate_images": 0, "exact_mask": np.zeros(0, bool)}
    )
    conflicts = label_conflicts(table.loc[readable], images[readable])
    _flag(issues, conflicts[ROW_ID], conflicts["reason"])
    if params.drop_duplicates and dupes["duplicate_images"]:
        copies = table.loc[readable].loc[dupes["exact_mask"], ROW_ID]
        _flag(issues, copies[~copies.isin(conflicts[ROW_ID])], "duplicate image")  # a conflict says more
    shapes = table.groupby(["height", "width", "channels"]).size()
    report = {
        "kind": IMAGE.name,
        "rows": int(len(table)),
        "representation": {
            "shapes": {f"{h}x{w}x{c}": int(n) for (h, w, c), n in shapes.items()},
            "value_range": [float(table["pixel_min"].min()), float(table["pixel_max"].max())] if len(table) else None,
        },
        "completeness": {
            "images_with_missing_pixels": int((table["n_missing"] > 0).sum()),
            "missing_pixels": int(table["n_missing"].sum()),
        },
        "uniqueness": {
            "duplicate_rows": dupes["duplicate_images"],
            "near_duplicate_images": dupes["near_duplicate_images"],
            "near_duplicate_fraction": dupes["near_duplicate_images"] / len(table) if len(table) else 0.0,
            "label_conflicts": {
                "count": int(len(conflicts)),
                "examples": conflicts["reason"].drop_duplicates().head(EXAMPLES).tolist(),
            },
        },
        "balance": quality.class_balance(table["class_name"]),
        "corrections": {
            "duplicates_quarantined": dupes["duplicate_images"] if params.drop_duplicates else 0,
            "unreadable_quarantined": int(failed.sum()),
            "label_conflicts_quarantined": int(len(conflicts)),
        },
    }
    flags = None
    if DECODE_ERROR in table:
        report["unreadable"] = {
            "count": int(failed.sum()),
            "examples": [
                {"file": str(f), "reason": str(r)}
                for f, r in zip(table.loc[failed, "file"][:EXAMPLES], table.loc[failed, DECODE_ERROR][:EXAMPLES])
            ],
        }
        flags = quality.picture_flags(table.loc[readable], gray[readable])  # its measures are all on grey
        report["representation"]["source"] = quality.image_representation(table.loc[readable], flags)
    return Corrected(table=table.copy(), report=report, row_issues=issues, picture_flags=flags)
