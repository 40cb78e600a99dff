"""Compression: torch eager fp32 vs onnxruntime fp32, int8 dynamic and int8
static (QDQ), at batch 1 and 256, on three models; and structured pruning.

    python -m bench.bench_compression [--seconds S]

Models: (a) the default champion architecture (tasks.ml.models.CNN with
params.yaml `distill` widths, 1x8x8 digits, 10 classes); (b) a reference MLP
784-1024-1024-10; (c) a reference small CNN on 1x28x28 (conv 32, pool, conv 64,
pool, fc 128, 10). Weights are random, so the figures measure speed and size,
not accuracy; int8 static is calibrated on random inputs in the model's raw
range, and `agreement` (top-1 fp32 vs int8 on other random inputs) only checks
nothing broke.

Threads are pinned to 2 everywhere (torch.set_num_threads, ORT intra-op). The
variants being compared are timed in interleaved rounds, so a busy spell on a
shared machine hits all of them rather than one. Each latency is the median of
single-call wall times after warm-up, each ratio a ratio of those medians. The
10th percentile and the load average before and after are recorded too: under
load, long calls are interrupted more often than short ones, which inflates
the speed-ups of the faster variants, so rerun on a quiet machine before
trusting absolute figures (load average well under the core count). Targets (AVX-512 VNNI CPU): reference MLP
int8 >= 2.5x ORT fp32 and >= 3x torch eager throughput at batch 256; int8 size
<= 0.3x fp32; small CNN with 50% of channels structurally pruned >= 1.3x faster
(ORT fp32, batch 256). Results go to reports/bench.json under "compression".
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.common import machine, record, timed
from tasks.core.params import load_params
from tasks.ml.models import CNN, CNNSpec
from tasks.contracts.onnx import IMAGE_INPUT, PROBABILITIES
from tasks.ml.pruning import prune_structured
from tasks.onnx.export import export_onnx
from tasks.onnx.runtime import file_size, session
from tasks.onnx.timing import Timings
from tasks.onnx.quantize import agreement, cpu_has_vnni, default_reduce_range, quantize

THREADS = 2
BATCHES = (1, 256)
OPSET = 17
CALIBRATION_SAMPLES = 256
PRUNE_AMOUNT = 0.5


def reference_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def small_cnn() -> CNN:
    """conv 32 -> pool -> conv 64 -> pool -> fc 128 -> 10, on 0..1 pixels."""
    return CNN(CNNSpec(input_shape=(1, 28, 28), channels=(32, 64), hidden=128, n_classes=10, dropout=0.0,
                       mean=(0.5,), std=(0.25,), batch_norm=True))


def champion_cnn() -> CNN:
    """The default student: params.yaml `distill` widths on 8x8 digits (0..16 pixels)."""
    distill = load_params().distill
    return CNN(CNNSpec(input_shape=(1, 8, 8), channels=tuple(distill.channels), hidden=distill.hidden,
                       n_classes=10, dropout=distill.dropout, mean=(4.9,), std=(6.0,),
                       batch_norm=distill.batch_norm))


def with_batch_norm_statistics(model: nn.Module) -> nn.Module:
    """Non-identity batch norm, as after training, so folding it is exercised."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def export_variants(model: nn.Module, input_shape: tuple[int, ...], pixel_max: float, folder: Path,
                    name: str, reduce_range: bool) -> dict[str, Path]:
    """fp32, int8 dynamic and int8 static (QDQ, per-channel, MinMax, output layer fp32) files."""
    rng = np.random.default_rng(1)
    calibration = rng.uniform(0, pixel_max, (CALIBRATION_SAMPLES, *input_shape)).astype(np.float32)
    files = {p: folder / f"{name}.{p}.onnx" for p in ("fp32", "int8_dynamic", "int8_static")}
    export_onnx(model, input_shape, files["fp32"], OPSET, IMAGE_INPUT)
    quantize(files["fp32"], files["int8_dynamic"], mode="dynamic", per_channel=True, reduce_range=reduce_range)
    quantize(files["fp32"], files["int8_static"], mode="static", calibration=calibration, per_channel=True,
             method="minmax", reduce_range=reduce_range, input_name=IMAGE_INPUT)
    return files


def bench_model(model: nn.Module, input_shape: tuple[int, ...], pixel_max: float, folder: Path, name: str,
                seconds: float, reduce_range: bool) -> dict:
    model = model.eval()
    files = export_variants(model, input_shape, pixel_max, folder, name, reduce_range)
    sessions = {p: session(f, threads=THREADS) for p, f in files.items()}
    rng = np.random.default_rng(2)
    x = rng.uniform(0, pixel_max, (max(BATCHES), *input_shape)).astype(np.float32)
    fp32_probs = sessions["fp32"].run([PROBABILITIES], {IMAGE_INPUT: x})[0]
    result: dict = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "size_bytes": {p: file_size(f) for p, f in files.items()},
        "agreement_vs_fp32": {
            p: agreement(fp32_probs, sessions[p].run([PROBABILITIES], {IMAGE_INPUT: x})[0])
            for p in ("int8_dynamic", "int8_static")
        },
    }
    for batch in BATCHES:
        rows = x[:batch]
        tensor = torch.from_numpy(rows)

        def eager(tensor=tensor):
            with torch.inference_mode():
                return torch.softmax(model(tensor), dim=1)

        fns = {"torch_fp32": eager}
        for precision, sess in sessions.items():
            fns[f"ort_{precision}"] = lambda sess=sess, rows=rows: sess.run([PROBABILITIES], {IMAGE_INPUT: rows})
        timings = Timings(fns, seconds)
        result[f"b{batch}"] = {
            "latency_ms": {k: round(timings.median(k), 4) for k in fns},
            "latency_ms_p10": {k: round(timings.p10(k), 4) for k in fns},
            "throughput_per_s": {k: round(batch / (timings.median(k) / 1000), 1) for k in fns},
            "ratios": speed_ratios(timings),
            "calls_timed": {k: len(timings.all(k)) for k in fns},
        }
    result["size_ratio"] = {
        p: round(result["size_bytes"][p] / result["size_bytes"]["fp32"], 3) for p in ("int8_dynamic", "int8_static")
    }
    return result


def speed_ratios(timings: Timings) -> dict[str, float]:
    """Throughput ratios at one batch size (= inverse ratios of median latencies)."""
    return {
        "int8_static_vs_ort_fp32": timings.speedup("ort_fp32", "ort_int8_static"),
        "int8_static_vs_torch_eager": timings.speedup("torch_fp32", "ort_int8_static"),
        "int8_dynamic_vs_ort_fp32": timings.speedup("ort_fp32", "ort_int8_dynamic"),
        "int8_dynamic_vs_torch_eager": timings.speedup("torch_fp32", "ort_int8_dynamic"),
        "ort_fp32_vs_torch_eager": timings.speedup("torch_fp32", "ort_fp32"),
    }


def bench_pruning(folder: Path, seconds: float) -> dict:
    """The small CNN vs itself with half its channels and hidden units removed
    (structured, L1): ORT fp32 latency at batch 256."""
    torch.manual_seed(3)
    full = with_batch_norm_statistics(small_cnn())
    pruned = prune_structured(full, PRUNE_AMOUNT, "l1")
    files = {"unpruned": folder / "small_cnn.onnx", "pruned": folder / "small_cnn.pruned.onnx"}
    export_onnx(full, full.spec.input_shape, files["unpruned"], OPSET, IMAGE_INPUT)
    export_onnx(pruned, pruned.spec.input_shape, files["pruned"], OPSET, IMAGE_INPUT)
    rows = np.random.default_rng(4).uniform(0, 1, (256, 1, 28, 28)).astype(np.float32)
    sessions = {k: session(f, threads=THREADS) for k, f in files.items()}
    timings = Timings(
        {k: (lambda s=s: s.run([PROBABILITIES], {IMAGE_INPUT: rows})) for k, s in sessions.items()}, seconds)
    return {
        "amount": PRUNE_AMOUNT,
        "channels": {"unpruned": list(full.spec.channels), "pruned": list(pruned.spec.channels)},
        "hidden": {"unpruned": full.spec.hidden, "pruned": pruned.spec.hidden},
        "parameters": {"unpruned": sum(p.numel() for p in full.parameters()),
                       "pruned": sum(p.numel() for p in pruned.parameters())},
        "size_bytes": {k: file_size(f) for k, f in files.items()},
        "latency_ms_b256": {k: round(timings.median(k), 4) for k in files},
        "latency_ms_b256_p10": {k: round(timings.p10(k), 4) for k in files},
        "speedup_b256": timings.speedup("unpruned", "pruned"),
    }


def bench_pipeline_champion(seconds: float) -> dict | None:
    """The pipeline's own artifacts, when `make run` has made them: the champion
    ONNX in onnxruntime against the fp32 teacher in torch eager, at batch 256,
    with the macro-F1 both reached on the test split (reports/metrics.json)."""
    import json

    from tasks.ml.models import load_model

    champion, teacher_stem, metrics_file = Path("models/champion.onnx"), Path("models/teacher"), Path("reports/metrics.json")
    if not (champion.exists() and teacher_stem.with_suffix(".json").exists() and metrics_file.exists()):
        return None
    metrics = json.loads(metrics_file.read_text())
    teacher = load_model(teacher_stem)
    x = np.random.default_rng(0).uniform(0, 16, (256, *teacher.spec.input_shape)).astype(np.float32)
    sess = session(champion, threads=THREADS)
    feed = {sess.get_inputs()[0].name: x}
    outputs = [sess.get_outputs()[-1].name]
    tensor = torch.as_tensor(x)

    def torch_teacher() -> object:
        with torch.no_grad():
            return teacher(tensor)

    timings = Timings({"teacher_torch_eager": torch_teacher, "champion_ort": lambda: sess.run(outputs, feed)}, seconds)
    candidates = metrics["candidates"]
    return {
        "champion": metrics["champion"],
        "teacher_torch_eager_ms_b256": timings.median("teacher_torch_eager"),
        "champion_ort_ms_b256": timings.median("champion_ort"),
        "throughput_ratio_b256": timings.speedup("teacher_torch_eager", "champion_ort"),
        "macro_f1_drop_points": 100 * (candidates["teacher.fp32"]["quality"] - candidates[metrics["champion"]]["quality"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="timing budget per model and batch size, shared by the variants")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    reduce_range = default_reduce_range()
    stages: dict[str, float] = {}
    results: dict = {
        "threads": THREADS,
        "vnni": cpu_has_vnni(),
        "reduce_range": reduce_range,
        "int8_static": "QDQ, uint8 activations, int8 per-channel weights, MinMax calibration, output layer fp32",
        "int8_dynamic": "int8 MatMul/Gemm weights (convs stay fp32)",
        "load_average_before": os.getloadavg()[0],
    }
    models = {
        "champion_cnn": (with_batch_norm_statistics(champion_cnn()), (1, 8, 8), 16.0),
        "reference_mlp": (reference_mlp().eval(), (784,), 1.0),
        "reference_small_cnn": (with_batch_norm_statistics(small_cnn()), (1, 28, 28), 1.0),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, shape, pixel_max) in models.items():
            with timed(stages, name):
                results[name] = bench_model(model, shape, pixel_max, Path(tmp), name, args.seconds, reduce_range)
        with timed(stages, "structured_pruning"):
            results["structured_pruning"] = bench_pruning(Path(tmp), args.seconds / 2)
    with timed(stages, "pipeline_champion"):
        results["pipeline_champion"] = bench_pipeline_champion(args.seconds / 2)
    mlp = results["reference_mlp"]
    results["targets"] = {
        "mlp_int8_vs_ort_fp32_b256 >= 2.5": mlp["b256"]["ratios"]["int8_static_vs_ort_fp32"] >= 2.5,
        "mlp_int8_vs_torch_eager_b256 >= 3": mlp["b256"]["ratios"]["int8_static_vs_torch_eager"] >= 3,
        "mlp_int8_size_ratio <= 0.3": mlp["size_ratio"]["int8_static"] <= 0.3,
        "pruned_50pct_speedup_b256 >= 1.3": results["structured_pruning"]["speedup_b256"] >= 1.3,
    }
    if results["pipeline_champion"]:
        champ = results["pipeline_champion"]
        results["targets"]["champion_vs_teacher_torch_b256 >= 10 at <= 1 point"] = (
            champ["throughput_ratio_b256"] >= 10 and champ["macro_f1_drop_points"] <= 1)
    results["load_average_after"] = os.getloadavg()[0]
    results["seconds"] = stages
    record("compression", results)
    print(f"{machine()['cpu']}, VNNI {results['vnni']}, {THREADS} threads, reduce_range {reduce_range}, "
          f"load average {results['load_average_before']:.1f} -> {results['load_average_after']:.1f}")
    for name in models:
        r = results[name]
        print(f"\n{name}: {r['parameters']:,} parameters, int8 size x{r['size_ratio']['int8_static']} (static) "
              f"x{r['size_ratio']['int8_dynamic']} (dynamic); top-1 agreement {r['agreement_vs_fp32']}")
        for batch in BATCHES:
            row = r[f"b{batch}"]
            cells = ", ".join(f"{k} {v:.3f} ms" for k, v in row["latency_ms"].items())
            print(f"  batch {batch}: {cells}")
            print("    p10: " + ", ".join(f"{k} {v:.3f} ms" for k, v in row["latency_ms_p10"].items()))
            print(f"    ratios {row['ratios']}")
    p = results["structured_pruning"]
    print(f"\nstructured pruning {p['channels']} hidden {p['hidden']}: {p['latency_ms_b256']} "
          f"-> {p['speedup_b256']}x at batch 256")
    print(f"\ntargets: {results['targets']}\nstage seconds: {stages}")


if __name__ == "__main__":
    main()
