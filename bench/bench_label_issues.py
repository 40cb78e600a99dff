"""Label-error detection against known flips, and what quarantining the
suspects does to the champion.

1. Detection: picture sets (`--sources`: the bundled digits, digits28, a
   harder digits28 drawn with stronger jitter, and 10-class doodles), as
   ingest reads them, with 3% and 10% of the labels moved to another class
   (seeded). The gate's confident learning flags suspects; precision and
   recall are against the flips, the estimated rate against the true one.
2. The champion: the same noisy digits as a CSV table (64 pixel columns and
   `digit`) through the whole pipeline (`dvc repro` in a temporary copy of
   the project), once with `validate.label_issues.action: report` and once
   with `quarantine`. Both champions are scored on the same clean hold-out:
   the digits ingest leaves out (data.digits.keep_fractions), with their true
   labels, which neither run saw.

`python -m bench.bench_label_issues [--noise 0.03 0.10] [--champion-noise 0.03]`;
results under `label_issues` in reports/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.common import IMAGE_SOURCES, record, source_params
from tasks.contracts.dataset import IMAGES, LABEL, LABELS, ROW_ID, Dataset
from tasks.core.params import load_params

REPO = Path(__file__).resolve().parents[1]


def flip_labels(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, set[int]]:
    """`fraction` of an image dataset's labels moved to another class, seeded; the row ids flipped."""
    rng = np.random.default_rng(seed)
    labels = dataset.arrays[LABELS].copy()
    rows = rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)
    k = len(dataset.meta.classes)
    labels[rows] = (labels[rows] + rng.integers(1, k, len(rows))) % k
    table = dataset.table.copy()
    table[LABEL] = labels
    return (
        Dataset(table=table, arrays={**dataset.arrays, LABELS: labels}, meta=dataset.meta),
        set(table[ROW_ID].to_numpy()[rows].tolist()),
    )


def detection(dataset: Dataset, fraction: float, seed: int, suite: str = "digits") -> dict:
    from tasks.data.gate import gate, load_suite

    params = load_params(REPO / "params.yaml")
    noisy, flips = flip_labels(dataset, fraction, seed)
    start = time.perf_counter()
    result = gate(noisy, "multiclass", params.validate, load_suite(REPO / f"expectations/{suite}.json"))
    found = {issue["row_id"] for issue in result.label_report["issues"]}
    hits = len(found & flips)
    return {
        "noise": fraction,
        "rows": len(noisy.table),
        "flipped": len(flips),
        "flagged": len(found),
        "precision": round(hits / len(found), 4) if found else None,
        "recall": round(hits / len(flips), 4),
        "estimated_rate": result.label_report["estimated_rate"],
        "flagged_rate": result.label_report["flagged_rate"],
        "model": result.label_report["model"],
        "model_quality": result.label_report["model_quality"],
        "reliable": result.label_report["reliable"],
        "gate_seconds": round(time.perf_counter() - start, 1),
    }


def as_csv(dataset: Dataset, path: Path) -> None:
    pixels = dataset.arrays[IMAGES].reshape(len(dataset.table), -1)
    frame = pd.DataFrame(pixels, columns=[f"px{i}" for i in range(pixels.shape[1])])
    frame["digit"] = dataset.arrays[LABELS]
    frame.to_csv(path, index=False)


def holdout(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The digits ingest did not keep, with their true labels: unseen by any run."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    kept = {image.astype(np.float32).tobytes() for image in dataset.arrays[IMAGES].astype(np.float32)}
    left = np.array([image.astype(np.float32).tobytes() not in kept for image in digits.images])
    return digits.images[left].reshape(int(left.sum()), -1), digits.target[left]


def champion_quality(project: Path, x: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.metrics import f1_score

    from deploy.model import build_model
    from deploy.protocol import parse_predict

    path = project / "models/champion.onnx"
    model = build_model(path.read_bytes(), name="bench", version="1", source=str(path), threads=1, folder=path.parent)
    rows = [{f"px{i}": float(v) for i, v in enumerate(row)} for row in x]
    answer = model.run(parse_predict({"rows": rows}, model, len(rows)).x)[model.answer]
    predicted = np.array([int(model.classes[i]) for i in answer.argmax(axis=1)])
    selection = json.loads((project / "reports/selection.json").read_text())
    labels = json.loads((project / "reports/label_issues.json").read_text())
    return {
        "champion": selection["champion"],
        "pipeline_test_macro_f1": round(selection["candidates"][selection["champion"]]["quality"], 4),
        "holdout_macro_f1": round(float(f1_score(y, predicted, average="macro")), 4),
        "holdout_accuracy": round(float((predicted == y).mean()), 4),
        "suspects": labels["suspects"],
        "quarantined": labels["quarantined"],
    }


def pipeline(project: Path, csv: Path, action: str) -> None:
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["data"].update(source="csv", path=str(csv.relative_to(project)), target="digit")
    params["validate"]["label_issues"]["action"] = action
    # Noisy test labels lower the measured quality, and the two runs are compared on the hold-out, not by
    # the gate: open it, so both runs reach a champion.
    params["select"].update(min_macro_f1=0.0, max_ece=1.0, max_drop_vs_champion=1.0)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "DISTILLERY_PYTHON": sys.executable,
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
    }
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"dvc repro ({action}) failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def copy_project(root: Path) -> Path:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    for name in tracked:
        if name.startswith("tests/") or name == "dvc.lock" or not (REPO / name).is_file():
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.email=b@b", "-c", "user.name=bench", "commit", "-qm", "copy"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.03, 0.10])
    parser.add_argument("--champion-noise", type=float, default=0.03, help="0 skips the two pipeline runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sources",
        nargs="+",
        default=list(IMAGE_SOURCES),
        choices=IMAGE_SOURCES,
        help="picture sets to flip labels in",
    )
    args = parser.parse_args()
    from tasks.ingest import ingest

    params = load_params(REPO / "params.yaml")
    results: dict = {"detection": []}
    for source in args.sources:
        with tempfile.TemporaryDirectory(prefix="bench-labels-") as folder:
            data = source_params(params, source, Path(folder)).data
            dataset = ingest(data)
        for fraction in args.noise:
            row = {"source": source, **detection(dataset, fraction, args.seed, data.source)}
            results["detection"].append(row)
            print(
                f"{source}, noise {row['noise']:.0%}: {row['flagged']} flagged for {row['flipped']} flips, "
                f"precision {row['precision']}, recall {row['recall']}, estimated rate {row['estimated_rate']:.3f} "
                f"({row['model']} macro-F1 {row['model_quality']}, reliable {row['reliable']})",
                flush=True,
            )
    dataset = ingest(params.data)
    if args.champion_noise:
        noisy, flips = flip_labels(dataset, args.champion_noise, args.seed)
        x, y = holdout(dataset)
        with tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp:
            project = copy_project(Path(tmp))
            csv = project / "data/raw/noisy_digits.csv"
            as_csv(noisy, csv)
            runs = {}
            for action in ("report", "quarantine"):
                pipeline(project, csv, action)
                runs[action] = champion_quality(project, x, y)
                print(f"{action}: {runs[action]}")
        results["champion"] = {"noise": args.champion_noise, "flipped": len(flips), "holdout_rows": len(y), **runs}
    record("label_issues", results)


if __name__ == "__main__":
    main()
