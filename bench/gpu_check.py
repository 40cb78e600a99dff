"""The GPU check, for a machine with CUDA: train the 28x28 teacher on the GPU
with mixed precision, export it to ONNX, and check that onnxruntime (CPU)
gives the logits the model gives on the GPU and on the CPU; with two or more
GPUs, train again with DDP over NCCL (torchrun, one process per GPU).

    python -m bench.gpu_check [--epochs 8] [--allow-cpu]

Records figures in reports/bench.json under "gpu". Without CUDA it says so and
exits 0 (the CPU tests never need a GPU); `--allow-cpu` runs the same steps
on the CPU, to check the script itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import processed_digits, record
from tasks.contracts.onnx import IMAGE_INPUT, LOGITS
from tasks.core.params import load_params
from tasks.evaluation.metrics import task_metrics
from tasks.ml.fitting import train_teacher
from tasks.ml.models import predict_logits
from tasks.onnx.export import export_onnx
from tasks.onnx.runtime import run_batches, session

DDP_RESULT_ENV = "DISTILLERY_GPU_CHECK_RESULT"


def setup(epochs: int):
    params = load_params()
    params = dataclasses.replace(
        params,
        data=dataclasses.replace(params.data, source="digits28"),
        train=dataclasses.replace(params.train, max_epochs=epochs),
    )
    splits, meta = processed_digits(params)
    return params, splits, meta


def train(params, splits, meta):
    started = time.perf_counter()
    model, result = train_teacher(
        (splits["train"]["x"], splits["train"]["y"]),
        (splits["val"]["x"], splits["val"]["y"]),
        meta,
        params.train,
        quiet=True,
    )
    return model, result, time.perf_counter() - started


def macro_f1(logits: np.ndarray, splits, meta) -> float:
    return task_metrics("multiclass", logits, splits["test"]["y"], list(meta.classes))["macro_f1"]


def ddp_worker() -> None:
    """One torchrun process: the same training, sharded (tasks/ml/distributed.py)."""
    from tasks.ml.distributed import is_main, process_group, world_size

    params, splits, meta = setup(int(os.environ.get("DISTILLERY_GPU_CHECK_EPOCHS", "8")))
    with process_group():
        model, result, seconds = train(params, splits, meta)
        if is_main():
            Path(os.environ[DDP_RESULT_ENV]).write_text(
                json.dumps(
                    {
                        "processes": world_size(),
                        "backend": torch.distributed.get_backend(),
                        "seconds": round(seconds, 1),
                        "epochs_run": result.epochs_run,
                        "test_macro_f1": macro_f1(predict_logits(model, splits["test"]["x"]), splits, meta),
                    }
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--allow-cpu", action="store_true", help="run the steps on the CPU when there is no GPU")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        return ddp_worker()
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("no CUDA device here: nothing to check (the CPU path is what `make test` covers)")
        record("gpu", {"cuda": False})
        return
    results: dict = {
        "cuda": cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
        "amp": cuda,
    }
    params, splits, meta = setup(args.epochs)
    model, result, seconds = train(params, splits, meta)  # pick_device(): the GPU, with autocast + GradScaler
    test_x = splits["test"]["x"]
    device_logits = predict_logits(model, test_x)
    model = model.cpu()
    cpu_logits = predict_logits(model, test_x)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "teacher.onnx"
        export_onnx(model, model.spec.input_shape, path, 17, IMAGE_INPUT)
        ort_logits = run_batches(session(path, threads=2), test_x, output=LOGITS)
    results.update(
        {
            "train_seconds": round(seconds, 1),
            "epochs_run": result.epochs_run,
            "test_macro_f1": macro_f1(device_logits, splits, meta),
            "max_abs_logit_diff_onnx_vs_cpu_torch": float(np.abs(ort_logits - cpu_logits).max()),
            "max_abs_logit_diff_onnx_vs_device_torch": float(np.abs(ort_logits - device_logits).max()),
            "top1_agreement_onnx_vs_device": float(np.mean(ort_logits.argmax(1) == device_logits.argmax(1))),
        }
    )
    results["parity_ok"] = (
        results["max_abs_logit_diff_onnx_vs_cpu_torch"] <= 1e-3
        and results["max_abs_logit_diff_onnx_vs_device_torch"] <= 5e-2
    )  # TF32 convs on GPU
    if cuda and torch.cuda.device_count() >= 2:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            env = {**os.environ, DDP_RESULT_ENV: out.name, "DISTILLERY_GPU_CHECK_EPOCHS": str(args.epochs)}
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc-per-node={min(2, torch.cuda.device_count())}",
                    "-m",
                    "bench.gpu_check",
                    "--ddp-worker",
                ],
                env=env,
            )
            results["ddp"] = (
                json.loads(Path(out.name).read_text()) if done.returncode == 0 else {"exit": done.returncode}
            )
    record("gpu", results)
    print(json.dumps(results, indent=1))
    if not results["parity_ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
