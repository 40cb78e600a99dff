"""Drift alarms on calm and shifted windows: the monitor's rule, with and
without its Bonferroni correction, next to Evidently's default tests.

    python -m bench.bench_drift

Data: scikit-learn's bundled breast-cancer table (569 rows, 30 numeric
features) and diabetes table (442 rows, 10 features). The reference is the
whole table; a window is 200 rows drawn from it with replacement, so a calm
window comes from exactly the reference distribution and every alarm on one
is false. A shifted window adds `shift` standard deviations to 40% or 60% of
the features (the first ones): Evidently's dataset verdict needs half of them.

Per window, three verdicts:
- monitor: the window calls for retraining (tasks.monitor.windows: a feature
  drifts when PSI > monitor.psi_threshold and its KS p-value < monitor.p_value,
  shared by the features with bonferroni; retrain above
  monitor.max_drifted_fraction of features);
- monitor, any feature: at least one feature flagged (what a per-feature
  alert would page on);
- evidently: Evidently's documented defaults, implemented here (the package
  pulls a web stack this project does not need). Per numeric column: with a
  reference of at most 1,000 rows, KS p < 0.05; above, the Wasserstein
  distance over the reference's standard deviation > 0.1. The dataset
  drifts when at least half of the columns do.
Results go to reports/bench.json under "drift".
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from bench.common import record
from tasks.core.params import load_params
from tasks.monitor import windows
from tasks.monitor.reference import Reference

WINDOW_ROWS, CALM_WINDOWS, SHIFTED_WINDOWS = 200, 200, 50
SHIFTS = (0.25, 0.5, 1.0)  # in standard deviations
SHIFTED_SHARES = (0.4, 0.6)


def evidently_column_drift(reference: np.ndarray, current: np.ndarray) -> bool:
    if len(reference) <= 1000:
        return bool(scipy_stats.ks_2samp(reference, current).pvalue < 0.05)
    scale = float(np.std(reference)) or 1.0
    return bool(scipy_stats.wasserstein_distance(reference, current) / scale > 0.1)


def verdicts(reference: Reference, table: pd.DataFrame, window: pd.DataFrame, monitor) -> dict[str, bool]:
    out = {}
    for name, params in (
        ("monitor", monitor),
        ("monitor_no_correction", dataclasses.replace(monitor, correction="none")),
    ):
        features = windows.feature_drift(reference, window, params)
        drifted = sum(f["drifted"] for f in features) / len(features)
        out[name] = drifted > params.max_drifted_fraction
        out[f"{name}_any_feature"] = drifted > 0
    columns = [evidently_column_drift(table[c].to_numpy(), window[c].to_numpy()) for c in table.columns]
    out["evidently"] = float(np.mean(columns)) >= 0.5
    out["evidently_any_column"] = any(columns)
    return out


def rates(
    reference: Reference, table: pd.DataFrame, monitor, shift: float, share: float, n: int, rng: np.random.Generator
) -> dict:
    shifted = list(table.columns[: int(round(share * table.shape[1]))])
    scale = table.std()
    counts: dict[str, int] = {}
    for _ in range(n):
        window = table.iloc[rng.integers(0, len(table), WINDOW_ROWS)].reset_index(drop=True)
        if shift:
            window[shifted] = window[shifted] + shift * scale[shifted]
        for key, value in verdicts(reference, table, window, monitor).items():
            counts[key] = counts.get(key, 0) + int(value)
    return {key: round(value / n, 4) for key, value in counts.items()}


def main() -> None:
    from sklearn.datasets import load_breast_cancer, load_diabetes

    monitor = load_params().monitor
    results: dict = {
        "window_rows": WINDOW_ROWS,
        "calm_windows": CALM_WINDOWS,
        "shifted_windows": SHIFTED_WINDOWS,
        "shifted_shares": list(SHIFTED_SHARES),
        "monitor": {
            "psi_threshold": monitor.psi_threshold,
            "p_value": monitor.p_value,
            "correction": monitor.correction,
            "max_drifted_fraction": monitor.max_drifted_fraction,
        },
        "datasets": {},
    }
    for name, loader in (("breast_cancer", load_breast_cancer), ("diabetes", load_diabetes)):
        table = loader(as_frame=True).data.astype(np.float64)
        reference = Reference(
            "tabular", "multiclass", {c: table[c].to_numpy() for c in table.columns}, {}, [], {}, "none", len(table)
        )
        rng = np.random.default_rng(0)
        entry = {
            "features": table.shape[1],
            "reference_rows": len(table),
            "false_alarm_rate": rates(reference, table, monitor, 0.0, 0.0, CALM_WINDOWS, rng),
        }
        entry["detection_rate"] = {
            f"{s}sd_on_{share:.0%}": rates(reference, table, monitor, s, share, SHIFTED_WINDOWS, rng)
            for share in SHIFTED_SHARES
            for s in SHIFTS
        }
        results["datasets"][name] = entry
        print(f"{name}: false alarms {entry['false_alarm_rate']}")
        for key, r in entry["detection_rate"].items():
            print(f"  shift {key} of the features: detection {r}")
    record("drift", results)


if __name__ == "__main__":
    main()
