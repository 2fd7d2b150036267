"""How long an ONNX export takes with each of torch's exporters, on the same graphs.

For every method it trains a tiny one-epoch run on synthetic data (or takes the run folders
given), then times ``torch.onnx.export`` of the run's exported graph (``infer/export.py``:
uint8 pixels -> score, raw, heatmap) with the TorchScript exporter, which ``defectkit export``
uses, and with the dynamo exporter, each into a temp file, side by side in one process. Every
model both make is checked by onnxruntime against PyTorch on the same images.

    python benchmarks/export_time.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
import time
import warnings
from pathlib import Path

from common import append_result, provenance


def export(graph, example, path: Path, dynamo: bool) -> float:
    import torch

    started = time.perf_counter()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("height", min=2), 3: torch.export.Dim("width", min=2)}
            torch.onnx.export(graph, (example,), str(path), input_names=["image"], output_names=["score", "raw", "heatmap"],
                              dynamic_shapes={"image": dims}, opset_version=18, dynamo=True, external_data=False)
        else:
            torch.onnx.export(graph, (example,), str(path), input_names=["image"], output_names=["score", "raw", "heatmap"],
                              dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}}, opset_version=18, dynamo=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run folders (default: one tiny run per method, trained here)")
    parser.add_argument("--results", default="benchmarks/results.jsonl")
    args = parser.parse_args()

    import torch

    from defectkit.data.synthetic import generate
    from defectkit.infer.export import _graph, _parity
    from defectkit.methods.registry import get_method, load_method, method_names
    from defectkit.methods.trainer import fit

    temp = Path(tempfile.mkdtemp())
    folders = [Path(r) for r in args.runs]
    if not folders:
        data = generate(temp / "data", n_train_good=6, n_train_defective=3, n_test_good=2, n_test_defective=2, size=(64, 128), seed=0)
        for name in method_names():
            size = (64, 128) if get_method(name).needs_defects else (32, 64)
            config = get_method(name).Config(dataset="synthetic", data_root=str(data), preset="tiny", input_size=size, epochs=1)
            folders.append(fit(config, temp / name, log=lambda _: None))
    rows = []
    for run in folders:
        method = load_method(run)
        width, height = method.pre.input_size
        example = torch.randint(0, 256, (2, method.pre.channels, height + 8, width + 8), dtype=torch.uint8)
        row = {"run": str(run), "method": method.name, "preset": method.config.preset}
        for exporter, dynamo in (("torchscript", False), ("dynamo", True)):
            path = temp / f"{run.name}-{exporter}.onnx"
            row[exporter] = export(_graph(load_method(run)), example, path, dynamo)
            row[f"{exporter}_difference"] = _parity(path, method)
        rows.append(row)
        print(row, flush=True)
    print()
    print("| method | preset | TorchScript exporter (s) | dynamo exporter (s) | ratio | largest score difference to PyTorch (TorchScript / dynamo) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['preset']} | {r['torchscript']:.1f} | {r['dynamo']:.1f} | {r['dynamo'] / r['torchscript']:.0f}x | "
              f"{r['torchscript_difference']:.1g} / {r['dynamo_difference']:.1g} |")
    append_result(args.results, {"benchmark": "export_time", **provenance(), "rows": rows})


if __name__ == "__main__":
    main()
