"""``defectkit export RUN_DIR --format onnx``: one ONNX model that takes raw pixels.

The graph holds everything between a decoded image and the answer, so a line's software
(C++, C#, a PLC gateway) needs only an ONNX runtime:

* input ``image``: uint8 ``N x C x H x W`` (C = the run's channels: 1 gray, 3 RGB), any batch
  size and any image size (all images of one call share a size);
* the run's preprocessing: bilinear resize to the training input size (half-pixel centres,
  no antialiasing, as :func:`defectkit.data.preprocess.network_input`) and scaling to [0, 1];
* outputs ``score`` (N; the method's score: a defect probability, or an anomaly score),
  ``raw`` (N; the value the threshold applies to: the logit, or the score itself) and
  ``heatmap`` (N x H x W, float32, at the input image's own size).

The decision threshold is not in the graph (``defectkit threshold`` may move it later); it is
in the JSON sidecar written beside the model (``model.onnx.json``) with the input spec, the
method (and whether its raw score is a logit), where the model came from and the largest score difference to the PyTorch run seen
when exporting. :class:`defectkit.infer.onnx_predictor.OnnxPredictor` reads both.

With ``int8`` the same graph is statically quantised (:mod:`defectkit.infer.quantize`) into
``model.int8.onnx``; its sidecar says ``"precision": "int8"`` and holds a ``quantization``
section (calibration, onnxruntime version, types, the test split's AP and AUROC of both
models); ``max_score_difference_to_torch`` is then that of the fp32 graph it was made from.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import __version__, runs
from ..errors import DataError
from ..files import refuse_existing, sha256
from . import quantize as Q
from .predictor import Predictor

SIDECAR_SUFFIX = ".json"
FORMAT_VERSION = 3  # 2: raw_is_logit in the sidecar; 3: input.resize "pad" (written only by such exports: older readers refuse them)
PARITY_TOLERANCE = 1e-4  # largest score difference to PyTorch the export accepts


def sidecar_path(model_path: str | Path) -> Path:
    path = Path(model_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _graph(method):
    """The method as one torch module from uint8 pixels to (score, raw, heatmap)."""
    import torch
    import torch.nn.functional as F

    width, height = method.pre.input_size

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = torch.nn.ModuleList(method.networks())  # every weight the graph holds

        def forward(self, image):
            x = F.interpolate(image.float(), size=(height, width), mode="bilinear", align_corners=False) / 255.0
            raw, small = method.forward(x)
            score = torch.sigmoid(raw) if method.raw_is_logit else raw
            heatmap = F.interpolate(small, size=image.shape[2:], mode="bilinear", align_corners=False)[:, 0]
            return score, raw, heatmap

    return Graph().eval()


def export_onnx(run_dir: str | Path, out: str | Path | None = None, weights: str = runs.MODEL, opset: int = 18, check: bool = True, log=print,
                overwrite: bool = False, int8: bool = False, calibration_images: int = Q.CALIBRATION_IMAGES, data_root: str | Path | None = None) -> Path:
    """Write ``out`` (default ``RUN_DIR/model.onnx``, ``RUN_DIR/model.int8.onnx`` with ``int8``)
    and its sidecar; return the model path.

    With ``check`` (default) the model is run on a few images of other sizes and batch sizes
    by onnxruntime and compared with the run's PyTorch method; a score difference above
    ``PARITY_TOLERANCE`` stops the export rather than ship a model that scores differently.
    With ``int8`` the checked graph is quantised, calibrated on ``calibration_images`` of the
    run's training images, and written only when it ranks the test split as the fp32 graph
    does (``data_root``: where the run's data is now, if it moved); that check always runs.
    An existing ``out`` or sidecar is replaced only with ``overwrite``."""
    import contextlib
    import io
    import logging
    import warnings

    import torch

    from ..methods.registry import load_method

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / ("model.int8.onnx" if int8 else "model.onnx")
    refuse_existing([out, sidecar_path(out)], overwrite)  # before the minutes of tracing
    method = load_method(run_dir, device="cpu", weights=weights)
    method.check_exportable()
    calibration = Q.calibration_samples(method, calibration_images, data_root) if int8 else None  # a missing data root fails now
    threshold = method.run_threshold(run_dir, weights)
    predictor = Predictor(method, threshold["value"], threshold_source=threshold)  # the threshold and heatmap scale, as predict uses them
    out.parent.mkdir(parents=True, exist_ok=True)
    # a method of its own: tracing must not leave traced tensors in the one checked against
    graph = _graph(load_method(run_dir, device="cpu", weights=weights))
    channels = method.pre.channels
    width, height = method.pre.input_size
    example = torch.randint(0, 256, (2, channels, height + 8, width + 8), dtype=torch.uint8)
    tmp = out.with_name(f".{out.name}.tmp")
    started = time.perf_counter()
    chatter = io.StringIO()
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" lines: true and irrelevant here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        warnings.simplefilter("ignore")
        try:
            # the TorchScript exporter: 10-20x faster than the dynamo one here, and every
            # export is checked against PyTorch below whichever exporter made it
            torch.onnx.export(graph, (example,), str(tmp), input_names=["image"], output_names=["score", "raw", "heatmap"],
                              dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}}, opset_version=opset, dynamo=False)
        except Exception as exc:  # the exporter's own errors are long; keep its message, drop its stack
            tmp.unlink(missing_ok=True)
            raise DataError(f"{run_dir}: ONNX export failed: {str(exc).splitlines()[0]}\n{chatter.getvalue()[-2000:]}") from None
        finally:
            quiet.setLevel(level)
    seconds = time.perf_counter() - started
    try:
        difference = _parity(tmp, method) if check else None
        if difference is not None and not difference <= PARITY_TOLERANCE:  # NaN fails too
            raise DataError(f"{run_dir}: the ONNX model's scores differ from PyTorch's by {difference:.3g} (> {PARITY_TOLERANCE}); not written")
        quantization = _quantized(run_dir, tmp, out, method, calibration, predictor.threshold_raw, data_root) if int8 else None
        if quantization is None:
            tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    sidecar = {
        "format": "defectkit-onnx", "format_version": FORMAT_VERSION if method.pre.resize == "pad" else 2, "defectkit": __version__,
        "method": method.name, "raw_is_logit": method.raw_is_logit, "run": str(run_dir.resolve()), "weights": weights,
        "model_sha256": sha256(out),
        "input": {"name": "image", "dtype": "uint8", "layout": "NCHW", "channels": channels,
                  "colour": "gray" if channels == 1 else "RGB", "size_any": True, "network_size": [width, height], "resize": method.pre.resize,
                  **({"pad": "before the graph: zeros at the right or bottom up to the network size's aspect ratio (width = round(height * W / H) "
                             "or height = round(width * H / W)); the heatmap output then covers that canvas: crop it to the image"}
                     if method.pre.resize == "pad" else {})},
        "outputs": {"score": f"N: {method.score_text}", "raw": "N: " + ("decision logit" if method.raw_is_logit else "same as score"),
                    "heatmap": f"N x H x W at the input image size: {method.heatmap_text}"},
        "threshold": {"raw": predictor.threshold_raw, "score": predictor.threshold, "rule": "defective when raw >= threshold.raw"},
        "heatmap_scale": predictor.heatmap_scale,
        "opset": opset, "export_seconds": round(seconds, 1), "max_score_difference_to_torch": difference,
        "precision": "int8" if int8 else "fp32",
    }
    if quantization is not None:
        sidecar["quantization"] = quantization
    runs.write_json(sidecar_path(out), sidecar)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {sidecar_path(out).name}"
        + ("" if difference is None else f"; largest score difference to PyTorch {difference:.2g}"))
    if quantization is not None:
        test = quantization["test_split"]
        changed = test["changed_decisions"]
        log(f"int8 vs fp32 on the test split ({test['images']} images): AP {test['ap_int8']:.4f} vs {test['ap_fp32']:.4f} ({test['ap_difference']:+.4f}), "
            f"AUROC {test['auroc_int8']:.4f} vs {test['auroc_fp32']:.4f} ({test['auroc_difference']:+.4f}); "
            + (f"{changed} of {test['images']} test decisions differ from the fp32 model's (raw >= threshold {predictor.threshold_raw:.4g})" if changed
               else "no test decision differs from the fp32 model's"))
    return out


def _quantized(run_dir: Path, fp32: Path, out: Path, method, calibration: list, threshold_raw: float, data_root) -> dict:
    """Quantise ``fp32`` into ``out`` when the int8 model passes the accuracy check; return the
    sidecar's ``quantization`` section. On a refusal nothing is left behind."""
    tmp = out.with_name(f".{out.name}.quantized.tmp")
    try:
        label = f"{run_dir}: "
        section = Q.quantize(fp32, tmp, calibration, method.pre, label)
        test = Q.compare(fp32, tmp, method, threshold_raw, data_root, label)
        problem = Q.accuracy_problem(test)
        if problem:
            raise DataError(f"{label}{problem}; not written")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    source = f"the run's training split ({method.config.dataset} at {method.config.data_root if data_root is None else data_root}), evenly spaced in the reader's order"
    return {**section, "calibration": {"images": len(calibration), "source": source, "size": list(method.pre.input_size)},
            "accuracy_tolerance": Q.ACCURACY_TOLERANCE, "test_split": test}


def _parity(path: Path, method) -> float:
    """Largest |score| difference between onnxruntime and the run's PyTorch method on images
    whose sizes and batch differ from the export example's."""
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    from ..data.preprocess import network_input, pad_to_aspect

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    width, height = method.pre.input_size
    channels = method.pre.channels
    worst = 0.0
    for batch, (h, w) in ((1, (height, width)), (3, (height * 3 // 2 + 5, width // 2 + 3))):
        # smooth images, as real ones are, so the check is not decided by noise alone
        base = rng.integers(0, 256, (batch, channels, 4, 4)).astype(np.float32)
        images = F.interpolate(torch.from_numpy(base), size=(h, w), mode="bicubic", align_corners=False).clamp(0, 255).round().to(torch.uint8).numpy()
        hwc = images.transpose(0, 2, 3, 1) if channels == 3 else images[:, 0]
        if method.pre.resize == "pad":  # as the ONNX predictor feeds the graph
            padded = np.stack([pad_to_aspect(a, (width, height)) for a in hwc])
            images = np.ascontiguousarray(padded.transpose(0, 3, 1, 2) if channels == 3 else padded[:, None])
            h, w = images.shape[2:]
        score, _raw, heatmap = session.run(None, {"image": images})
        reference_raw, _ = method.score_batch(np.stack([network_input(a, (width, height), method.pre.resize) for a in hwc]))
        reference = method.to_score(reference_raw)
        if heatmap.shape != (batch, h, w):
            raise DataError(f"ONNX heatmap has shape {heatmap.shape}, expected {(batch, h, w)}")
        worst = max(worst, float(np.abs(score.astype(np.float64) - reference).max()))
    return worst
