"""The four data-quality dimensions, measured: consistent representation,
completeness, uniqueness (near-duplicates included) and class balance.

Every function is vectorised or works on distinct values, never on all pairs
of rows, so a million rows take seconds.
"""

from __future__ import annotations

from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# The measures the custom GX expectations compute too, defined once beside them so the gate checks the
# numbers this module reports. The `x as x` ones are re-exported: this module is where stages find every measure.
from expectations.measures import (
    class_balance as class_balance,
)
from expectations.measures import (
    duplicate_rows as duplicate_rows,
)
from expectations.measures import (
    fold as fold,
)
from expectations.measures import (
    map_distinct,
)
from expectations.measures import (
    near_duplicate_rows as near_duplicate_rows,
)
from tasks.contracts.dataset import ROW_ID

# Numbers with a unit or currency ("65000 $", "12.5 kg") are parsed by the table encoder's contract, so that
# serving reads a row's text with the very code the gate read the training rows with.
from tasks.contracts.encoder import UNIT_NUMBER as UNIT_NUMBER
from tasks.contracts.encoder import as_boolean, as_dates, fold_synonyms
from tasks.contracts.encoder import parse_numbers as parse_numbers
from tasks.data.images import FORMAT_OF_EXTENSION

# --------------------------------------------------------------------------- representation


def observed_type(values: pd.Series, parsed: pd.DataFrame | None = None) -> str:
    """boolean | numeric | datetime | categorical | text | mixed | empty, from the
    values themselves. `parsed` (parse_numbers of the same values) saves parsing twice."""
    present = values.dropna()
    if present.empty:
        return "empty"
    if is_boolean(present):
        return "boolean"
    if pd.api.types.is_numeric_dtype(present):
        return "numeric"
    if date_format(present) is not None:
        return "datetime"
    parsed = parsed if parsed is not None else parse_numbers(values)
    distinct = present.nunique()
    if codes_not_units(parsed, distinct):
        return "categorical"
    kinds = parsed["kind"]
    kinds = kinds[kinds != "missing"].value_counts()
    numeric_share = (kinds.get("number", 0) + kinds.get("unit", 0)) / len(present)
    if numeric_share == 1:
        return "numeric"
    if numeric_share > 0:
        return "mixed"
    return "categorical" if distinct <= max(20, 0.05 * len(present)) else "text"


def is_boolean(present: pd.Series) -> bool:
    """Every value a spelling of yes or no (Y/N, yes/no, true/false, T/F, 1/0; any case)."""
    return bool(as_boolean(present).notna().all())


# The spellings of dates tried, most common first. Month before day, as pandas reads them: a
# day over 12 rules the first out. ISO 8601 covers "2021-03-04", "2021-03-04 10:30" and offsets.
DATE_FORMATS = (
    "ISO8601",
    "%m/%d/%Y",
    "%d/%m/%Y",
    "%m/%d/%y",
    "%d/%m/%y",
    "%d.%m.%Y",
    "%Y/%m/%d",
    "%d %b %Y",
    "%b %d %Y",
    "%b %d, %Y",
    "%d-%b-%Y",
    "%d-%b-%y",
)
DATE_SHARE = 0.95  # a format reads at least this share of a column's values for it to be a date column


def date_format(present: pd.Series) -> str | None:
    """The format that reads the (non-missing) values as dates, or None. Plain
    numbers ("2006", "20210304") are numbers, not dates; parsed datetimes are ISO 8601."""
    if pd.api.types.is_datetime64_any_dtype(present):
        return "ISO8601"
    if present.empty or pd.api.types.is_numeric_dtype(present):
        return None
    counts = present.astype("string").str.strip().value_counts()
    text = pd.Series(counts.index, dtype="string")
    # Dates have digits and are not numbers: this rules out nearly every column of words at once.
    dateish = text.str.contains(r"\d") & pd.to_numeric(text, errors="coerce").isna()
    if counts[dateish.to_numpy()].sum() < DATE_SHARE * counts.sum():
        return None
    for candidate in DATE_FORMATS:
        read = as_dates(text, candidate).notna().to_numpy()
        if counts[read].sum() >= DATE_SHARE * counts.sum():
            return candidate
    return None


CODE_CARDINALITY = 12  # this few distinct values, some of them "<number><letters>": codes (1Fam, 2Story), not units
ONE_UNIT = 0.9  # a numeric-with-unit column spells one unit (or currency) on at least this share of its united values


def codes_not_units(parsed: pd.DataFrame, distinct: int) -> bool:
    """A column whose "units" are category codes: `1Fam`, `2fmCon`, `Duplex`,
    `TwnhsE`, or `1Story`, `2Story`, `1.5Fin`, `SLvl`. A real numeric-with-unit
    column ("65000 $", "12 kg") spells one unit or currency across most of its
    values and has many distinct numbers (skrub's rule of thumb, in spirit: a
    low-cardinality column of mixed codes is categorical)."""
    units = parsed["unit"][parsed["kind"] == "unit"]
    if units.empty:
        return False
    counts = units.value_counts()
    if counts.iloc[0] / counts.sum() < ONE_UNIT:  # many "units": each is a code
        return True
    # Few distinct values spelling more than one "unit": a code list (1Fam beside 2fmCon), not measurements.
    return distinct <= CODE_CARDINALITY and len(counts) > 1


def category_variants(values: pd.Series, synonyms: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Groups of distinct raw values that mean the same category once case,
    whitespace and the synonym map are applied. Only groups with >1 variant."""
    canonical = _canonical_map(values, synonyms or {})
    groups: dict[str, list[str]] = {}
    for raw, canon in canonical.items():
        groups.setdefault(canon, []).append(raw)
    counts = values.value_counts()
    return [
        {"canonical": canon, "variants": sorted(raw), "rows": int(counts[raw].sum())}
        for canon, raw in sorted(groups.items())
        if len(raw) > 1
    ]


def _canonical_map(values: pd.Series, synonyms: dict[str, str]) -> dict[str, str]:
    """raw value -> canonical spelling, independent of row order. Synonym keys
    match after folding, and a synonym's target is also the spelling of its own
    folded form ("hr" -> "HR" when some synonym maps to "HR"). Other variants take
    their group's most common spelling, ties broken alphabetically."""
    folded_synonyms = fold_synonyms(synonyms)
    counts = values.dropna().astype(str).value_counts()
    best: dict[str, tuple[int, str]] = {}
    for raw, n in counts.items():
        tidy = " ".join(raw.split())
        key = fold(raw)
        if key not in best or (-n, tidy) < (-best[key][0], best[key][1]):
            best[key] = (n, tidy)
    return {raw: folded_synonyms.get(fold(raw), best[fold(raw)][1]) for raw in counts.index}


def normalise_categories(values: pd.Series, synonyms: dict[str, str] | None = None) -> tuple[pd.Series, int]:
    """Apply case/whitespace folding and synonyms; return the new column and how
    many values changed."""
    mapping = _canonical_map(values, synonyms or {})
    new = map_distinct(values, lambda v: mapping.get(str(v), v)).astype(values.dtype)
    changed = int((new.astype("string") != values.astype("string")).fillna(False).sum())
    return new, changed


def outliers(values: pd.Series, method: str, threshold: float) -> pd.Series:
    """Boolean mask of outliers: Tukey's IQR fences or the robust z-score
    (0.6745 * (x - median) / MAD)."""
    x = pd.to_numeric(values, errors="coerce")
    if x.notna().sum() < 4:
        return pd.Series(False, index=values.index)
    if method == "iqr":
        q1, q3 = x.quantile([0.25, 0.75])
        spread = q3 - q1
        return ((x < q1 - threshold * spread) | (x > q3 + threshold * spread)).fillna(False)
    median = x.median()
    mad = (x - median).abs().median()
    if mad == 0:
        return pd.Series(False, index=values.index)
    return (0.6745 * (x - median).abs() / mad > threshold).fillna(False)


# --------------------------------------------------------------------------- completeness


MECHANISM_SAMPLE = 20_000  # rows used for the missingness-mechanism tests


def completeness(df: pd.DataFrame, p_value: float = 0.01) -> dict[str, Any]:
    """Missing count and fraction per column, rows with any missing value, and a
    hint at the mechanism: if a column's missingness is associated with another
    observed column, the data are not MCAR."""
    missing = df.isna()
    columns = {col: {"missing": int(missing[col].sum()), "fraction": float(missing[col].mean())} for col in df.columns}
    mechanism = {}
    # The tests need thousands of rows, not millions: a fixed sample keeps them cheap.
    sample = df if len(df) <= MECHANISM_SAMPLE else df.sample(MECHANISM_SAMPLE, random_state=0)
    for col in df.columns:
        n_missing = int(missing[col].sum())
        if n_missing == 0 or n_missing == len(df):
            continue
        associated = _missingness_associations(sample, sample[col].isna(), col, p_value)
        mechanism[col] = {
            "associated_with": associated,
            "hint": "not MCAR: missingness depends on observed columns (MAR or MNAR)"
            if associated
            else "consistent with MCAR (no association found with observed columns)",
        }
    return {
        "columns": columns,
        "rows_with_missing": int(missing.any(axis=1).sum()),
        "rows_with_missing_fraction": float(missing.any(axis=1).mean()) if len(df) else 0.0,
        "mechanism": mechanism,
    }


def _missingness_associations(df: pd.DataFrame, is_missing: pd.Series, col: str, p_value: float) -> list[dict]:
    """Test each other column against the missing/present split of `col`:
    Mann-Whitney U for numbers, chi-squared for categories."""
    from scipy import stats

    found = []
    for other in df.columns:
        if other == col:
            continue
        values = df[other]
        observed = values.notna()
        if pd.api.types.is_numeric_dtype(values):
            a, b = values[is_missing & observed], values[~is_missing & observed]
            if len(a) < 3 or len(b) < 3 or values.nunique() < 2:
                continue
            p = float(stats.mannwhitneyu(a, b).pvalue)
            test = "mann-whitney"
        else:
            if values.nunique() < 2 or values.nunique() > 50:
                continue
            table = pd.crosstab(is_missing[observed], values[observed])
            if table.shape[0] < 2 or table.shape[1] < 2:
                continue
            p = float(stats.chi2_contingency(table).pvalue)
            test = "chi2"
        if p < p_value:
            found.append({"column": other, "test": test, "p_value": p})
    return found


def plot_missingness(df: pd.DataFrame, path: Any, max_rows: int = 1000) -> None:
    """A missingno-style matrix: one row per sample (sampled to `max_rows`), dark
    where present, white where missing, with each row's completeness at the side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.core.io import atomic_path

    sample = df if len(df) <= max_rows else df.sample(max_rows, random_state=0).sort_index()
    present = sample.notna().to_numpy()
    fig, (ax, side) = plt.subplots(
        1, 2, figsize=(max(6, 0.45 * len(df.columns) + 2), 5), gridspec_kw={"width_ratios": [12, 1]}, sharey=True
    )
    ax.imshow(present, aspect="auto", cmap="Greys", vmin=0, vmax=1.4, interpolation="nearest")
    ax.set_xticks(range(len(df.columns)))
    ax.set_xticklabels([str(c) for c in df.columns], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"rows ({len(sample)} of {len(df)})")
    ax.set_title("missing values (white)")
    side.plot(present.sum(axis=1), np.arange(len(sample)), lw=0.6, color="black")
    side.set_xlim(0, len(df.columns))
    side.set_xlabel("present")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def plot_balance(counts: dict[str, int], path: Any) -> None:
    """Bar chart of samples per class, rarest last, so imbalance is seen at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.core.io import atomic_path

    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(ordered) + 2), 3.2))
    ax.bar([str(k) for k, _ in ordered], [v for _, v in ordered], color="#4c72b0")
    ax.set_xlabel("class")
    ax.set_ylabel("samples")
    ratio = f"{ordered[0][1] / ordered[-1][1]:.1f}" if ordered and ordered[-1][1] else "n/a"
    ax.set_title(f"class balance: imbalance ratio {ratio} (largest / smallest class)", fontsize=9)
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- uniqueness
# duplicate_rows and near_duplicate_rows: expectations/measures.py


def near_duplicate_values(values: pd.Series, threshold: float, max_distinct: int = 2000) -> list[dict[str, Any]]:
    """Pairs of distinct values whose SequenceMatcher ratio is at least
    `threshold` but that are not equal after folding (those are variants, not
    typos). Works on distinct values; beyond `max_distinct` it keeps the most
    frequent, and blocks pairs by length so most are never compared."""
    counts = values.dropna().astype(str).value_counts()
    distinct = list(counts.index[:max_distinct])
    by_fold: dict[str, str] = {}
    for value in distinct:
        by_fold.setdefault(fold(value), value)
    keys = sorted(by_fold, key=len)
    pairs = []
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            # ratio <= 2*min/(len sum): stop once b is too long to reach the threshold.
            if 2 * len(a) / (len(a) + len(b)) < threshold:
                break
            matcher = SequenceMatcher(None, a, b, autojunk=False)
            if matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold:
                ratio = matcher.ratio()
                if ratio >= threshold:
                    pairs.append({"a": by_fold[a], "b": by_fold[b], "ratio": round(ratio, 4)})
    return pairs


def difference_hash(images: np.ndarray, size: int = 8) -> np.ndarray:
    """64-bit dHash per image: shrink to (size, size+1) by area averaging, then
    one bit per horizontally adjacent pair. Near-identical images share a hash."""
    n, height, width = images.shape
    rows = np.linspace(0, height, size + 1).astype(int)
    cols = np.linspace(0, width, size + 2).astype(int)
    x = np.nan_to_num(images.astype(np.float32))
    # Block means via cumulative sums: exact area averaging without a resize library.
    integral = np.pad(x.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    r0, r1 = rows[:-1], np.maximum(rows[1:], rows[:-1] + 1)
    c0, c1 = cols[:-1], np.maximum(cols[1:], cols[:-1] + 1)
    r1, c1 = np.minimum(r1, height), np.minimum(c1, width)
    sums = integral[:, r1][:, :, c1] - integral[:, r0][:, :, c1] - integral[:, r1][:, :, c0] + integral[:, r0][:, :, c0]
    means = sums / ((r1 - r0)[:, None] * (c1 - c0)[None, :])
    bits = (means[:, :, 1:] > means[:, :, :-1]).reshape(n, -1)
    return np.ascontiguousarray(np.packbits(bits, axis=1)).view(">u8").ravel().astype(np.uint64)


def grayscale(images: np.ndarray) -> np.ndarray:
    """(N, H, W) pictures as they are; (N, H, W, C) colour as the mean of its channels."""
    return images.mean(axis=3) if images.ndim == 4 else images


def near_duplicate_groups(images: np.ndarray) -> np.ndarray:
    """A group id per image (grey or colour, hashed as its mean): images sharing a dHash share one. A flat
    image (no left-to-right rise anywhere: hash 0, a blank or constant picture) says nothing of its
    content and is a group of its own."""
    hashes = difference_hash(grayscale(images))
    groups = pd.factorize(hashes)[0].astype(np.int64)
    flat = hashes == 0
    groups[flat] = len(images) + np.flatnonzero(flat)
    return groups


def image_duplicates(images: np.ndarray) -> dict[str, Any]:
    """Exact duplicate images (same bytes) and near-duplicates (same dHash but
    different bytes)."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    exact = pd.Series([row.tobytes() for row in flat]).duplicated(keep="first").to_numpy()
    hashes = pd.Series(difference_hash(images))
    near = hashes.duplicated(keep="first").to_numpy() & ~exact
    return {
        "duplicate_images": int(exact.sum()),
        "near_duplicate_images": int(near.sum()),
        "exact_mask": exact,
        "near_mask": near,
    }


# --------------------------------------------------------------------------- balance
# class_balance: expectations/measures.py


def target_distribution(values: pd.Series) -> dict[str, Any]:
    """For a regression target, balance is the shape of its distribution: a
    heavy skew or a few extreme values can dominate a squared loss."""
    x = pd.to_numeric(values, errors="coerce").dropna()
    if x.empty:
        return {"counts": {}, "imbalance_ratio": None, "gini": None, "normalized_entropy": None}
    quartiles = x.quantile([0.25, 0.5, 0.75])
    return {
        "counts": {},
        "imbalance_ratio": None,
        "gini": None,
        "normalized_entropy": None,
        "target": {
            "mean": float(x.mean()),
            "std": float(x.std()),
            "min": float(x.min()),
            "max": float(x.max()),
            "quartiles": [float(q) for q in quartiles],
            "skew": float(x.skew()) if len(x) > 2 else 0.0,
        },
    }


# --------------------------------------------------------------------------- pictures as stored
# CleanVision's issue types and default thresholds are the anchor (cleanvision/issue_managers):
# odd_size (a side-root over 10x or under 1/10 of the median), odd_aspect_ratio (min(w/h, h/w) < 0.5),
# dark (99th percentile of brightness < 0.37 of full scale), light (5th percentile > 0.95),
# low_information (grayscale histogram entropy < 0.3 of its 8 bits), blurry (below). Warnings: counted,
# each a GX expectation with a severity (expectations/images.json), never quarantined.
ODD_SIZE_FACTOR = 10.0
ODD_ASPECT = 0.5
DARK_P99, LIGHT_P5 = 0.37, 0.95
LOW_INFORMATION = 0.3
# CleanVision's blurry (issue_managers/image_property.py, BlurrinessProperty; defaults threshold 0.29,
# normalizing_factor 0.01, color_threshold 0.18): the spread of the edges (PIL's FIND_EDGES kernel, clipped
# to 0..255) scores 1 - exp(-0.01 std); a peaky grey histogram (few tones: drawings, flat backgrounds, which
# have little edge to measure) adds its own score when that is over 0.18; under 0.29 is blurry. CleanVision
# measures a copy at most 64 px a side; here the pictures as held (data.images.size), with the histogram
# counted as over 64x64 pixels so the tone score means the same at any size.
BLUR_NORMALISER, BLURRY_BELOW, FEW_TONES_ABOVE = 0.01, 0.29, 0.18
BLUR_REFERENCE_PIXELS = 64 * 64
PICTURE_WARNINGS = (
    "extension_mismatch",
    "odd_size",
    "odd_aspect_ratio",
    "channel_mismatch",
    "dark",
    "light",
    "low_information",
    "blurry",
)
REPRESENTATION_EXAMPLES = 5


def blur_scores(gray: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """CleanVision's blur score (0..1, low = blurry) of each (N, H, W) grey uint8-range
    picture, given its 256-bin grey histogram (N, 256)."""
    g = gray.astype(np.float64)
    if g.shape[1] < 3 or g.shape[2] < 3:
        return np.ones(len(g))  # no interior pixel to take an edge at
    centre = g[:, 1:-1, 1:-1]
    around = sum(
        g[:, 1 + dy : g.shape[1] - 1 + dy, 1 + dx : g.shape[2] - 1 + dx]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if dy or dx
    )
    edges = np.clip(8 * centre - around, 0, 255).reshape(len(g), -1)
    blur = 1 - np.exp(-BLUR_NORMALISER * edges.std(axis=1))
    scaled = hist * (BLUR_REFERENCE_PIXELS / (g.shape[1] * g.shape[2]))
    tones = 1 - np.exp(-BLUR_NORMALISER * scaled.std(axis=1))
    return np.minimum(blur + np.where(tones > FEW_TONES_ABOVE, tones, 0.0), 1.0)


def _examples(files: pd.Series, mask: np.ndarray) -> dict[str, Any]:
    return {"count": int(mask.sum()), "examples": files[mask].astype(str).head(REPRESENTATION_EXAMPLES).tolist()}


def picture_flags(table: pd.DataFrame, images: np.ndarray) -> pd.DataFrame:
    """`row_id` and one 0/1 column per warning in PICTURE_WARNINGS, a row per picture as read
    (`table`: the source_* columns of tasks.data.images; `images`: their decoded
    uint8 pixels, on which brightness, information and blur are measured). The
    gate runs the suite's expectations on these columns (their mean is the
    share of pictures with the issue)."""
    if table.empty:
        return pd.DataFrame(
            {ROW_ID: pd.Series(dtype=np.int64), **{n: pd.Series(dtype=np.float64) for n in PICTURE_WARNINGS}}
        )
    width = table["source_width"].to_numpy(np.float64)
    height = table["source_height"].to_numpy(np.float64)
    side = np.sqrt(width * height)
    median = float(np.median(side))
    channels = table["source_channels"].to_numpy()
    values, counts = np.unique(channels, return_counts=True)
    grey = grayscale(images)
    gray = grey.reshape(len(images), -1) / 255.0
    p99, p5 = np.percentile(gray, 99, axis=1), np.percentile(gray, 5, axis=1)
    hist = np.stack([np.bincount(np.clip(row * 255, 0, 255).astype(np.int64), minlength=256) for row in gray])
    prob = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    entropy = -(np.where(prob > 0, prob * np.log2(np.where(prob > 0, prob, 1)), 0)).sum(axis=1) / 8.0
    extension = table["file"].astype(str).map(lambda name: FORMAT_OF_EXTENSION.get(Path(name).suffix.lower(), ""))
    flags = {
        "extension_mismatch": ((extension != "") & (extension != table["format"].astype(str))).to_numpy(),
        "odd_size": (side > median * ODD_SIZE_FACTOR) | (side < median / ODD_SIZE_FACTOR),
        "odd_aspect_ratio": np.minimum(width / height, height / width) < ODD_ASPECT,
        "channel_mismatch": channels != values[np.argmax(counts)],
        "dark": p99 < DARK_P99,
        "light": p5 > LIGHT_P5,
        "low_information": entropy < LOW_INFORMATION,
        "blurry": blur_scores(grey, hist) < BLURRY_BELOW,
    }
    return pd.DataFrame(
        {ROW_ID: table[ROW_ID].to_numpy(), **{name: flags[name].astype(np.float64) for name in PICTURE_WARNINGS}}
    )


def image_representation(table: pd.DataFrame, flags: pd.DataFrame) -> dict[str, Any]:
    """Size, aspect, channel, format, exposure and blur issues of the pictures as
    read: counts and a few file names per warning (`flags`: picture_flags)."""
    files = table["file"].reset_index(drop=True)
    if table.empty:
        return {"checked": 0}
    width, height = table["source_width"].to_numpy(np.float64), table["source_height"].to_numpy(np.float64)
    values, counts = np.unique(table["source_channels"].to_numpy(), return_counts=True)
    formats = table["format"].astype(str).value_counts()
    found = {name: _examples(files, flags[name].to_numpy() > 0) for name in PICTURE_WARNINGS}
    return {
        "checked": int(len(table)),
        "source_sizes": {
            "median_side": float(np.median(np.sqrt(width * height))),
            "min": [int(width.min()), int(height.min())],
            "max": [int(width.max()), int(height.max())],
        },
        **found,
        "channel_mismatch": {**found["channel_mismatch"], "usual_channels": int(values[np.argmax(counts)])},
        "formats": {str(k): int(v) for k, v in formats.items()},
        "format_mix": len(formats) > 1,
        # Not a fault once applied (a phone's sideways photo reads upright), but counted: the picture
        # a user opens in a viewer that ignores EXIF is not the one trained on.
        "exif_oriented": _examples(files, table["source_orientation"].to_numpy() > 1),
    }
