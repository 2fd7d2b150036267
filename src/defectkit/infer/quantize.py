"""``defectkit export RUN --int8``: the exported graph statically quantised for CPU inference.

onnxruntime's ``quantize_static`` in QDQ format: int8 weights per output channel, uint8
activations per tensor with MinMax ranges calibrated on the run's own training images. On x86
this is the pair onnxruntime fuses into integer kernels (QLinearConv, QGemm); int8 activations
were measured to stay float Conv behind DequantizeLinear there, slower than no quantisation.
The weights keep 7 bits (``reduce_range``): x86 CPUs without VNNI (AVX2) multiply uint8 by int8
in pairs summed into int16, which saturates with full-range weights (measured: SegDec's
classifier Gemm gave one constant score); 7-bit weights cannot, wherever the model runs.

Only Conv and Gemm nodes whose weight is a constant of the graph are quantised: the learned
layers. Everything else stays float: the resize and scaling of the input, the heatmap's
resize, normalisations, the fixed filters a method computes in the graph (gradients, blurs:
their kernels are Constant nodes), MatMul, whose only constant use here is PatchCore's
distance to its memory bank (``|q|^2 - 2 q.m + |m|^2`` cancels more digits than int8 has), and
grouped (depthwise) convolutions: few multiply-adds to save, and on PatchCore's EfficientNet
they made most of the error (largest raw-score change 17% of the largest score with them, 5%
without, on a tiny run). The first and the last learned layer (every use of their weights)
stay float too, as is usual: the first sees the pixels, the last makes the score or map, and
keeping them halved the AP and AUROC changes of a SegDec and a PatchCore run (synthetic data,
200 test images: SegDec AP -0.0052 to +0.0021, PatchCore AP -0.0097 to -0.0036).

A quantised model is written only when it ranks the run's test split as the fp32 graph does:
AP and image AUROC each within :data:`ACCURACY_TOLERANCE`; :func:`compare` measures it.

Its sessions run at onnxruntime's "extended" graph optimisation, not the default "all" (the
sidecar says so and :class:`~defectkit.infer.onnx_predictor.OnnxPredictor` follows it): "all"
adds the NHWC layout of QLinearConv, which made a SegDec run's int8 scores depend on the batch
(one image alone vs in a batch of 6: up to 0.02 apart) and was slower (1.07 vs 1.25 images/s,
segdec small at 232x640); at "extended" every batch scores alike, as the check scored.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from .. import progress
from ..errors import ConfigError, DataError

ACCURACY_TOLERANCE = 0.005  # largest |AP| and |AUROC| change on the test split an int8 model may make
CALIBRATION_IMAGES = 64
QUANTIZED_OPS = ("Conv", "Gemm")
GRAPH_OPTIMIZATION = "extended"  # onnxruntime's level for int8 sessions (see above)


def _image(sample, pre, resized: bool = False) -> np.ndarray:
    """uint8 ``1 x C x H x W`` as the graph takes it (on its canvas in ``pad`` mode, as the ONNX
    predictor feeds it), already at the network size when ``resized``."""
    import cv2

    from ..data.imageio import read_image
    from ..data.preprocess import pad_to_aspect

    image = read_image(sample.image_path, pre.channels)
    if pre.resize == "pad":
        image = pad_to_aspect(image, pre.input_size)
    if resized and (image.shape[1], image.shape[0]) != tuple(pre.input_size):
        image = cv2.resize(image, tuple(pre.input_size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray((image[None] if pre.channels == 1 else image.transpose(2, 0, 1))[None])


def calibration_samples(method, count: int = CALIBRATION_IMAGES, data_root=None) -> list:
    """Up to ``count`` of the run's training-split images, evenly spaced in the reader's order:
    deterministic, and drawn from both classes where the reader lists good images first."""
    from ..data.partition import read_parts

    if count < 1:
        raise ConfigError(f"calibration images must be at least 1, got {count}")
    train = read_parts(method.config, data_root, of_run=True).get("train") or []
    if not train:
        raise DataError(f"dataset {method.config.dataset}: no training images to calibrate the int8 model on")
    picks = np.unique(np.linspace(0, len(train) - 1, min(count, len(train))).round().astype(int))
    return [train[i] for i in picks]


def _prepared(path: Path):
    """The fp32 graph with every node named and each Identity of a weight bypassed: the
    TorchScript exporter shares a weight used twice (RIAD's U-Net, one pass per mask) through
    Identity nodes, which the quantiser would take for activations."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    weights = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in weights and n.output[0] not in outputs}
    for i, node in enumerate(list(graph.node)):
        if node.op_type == "Identity" and node.output[0] in alias:
            graph.node.remove(node)
            continue
        node.name = node.name or f"{node.op_type}_{i}"
        for j, name in enumerate(node.input):
            if name in alias:
                node.input[j] = alias[name]
    learned = [n for n in graph.node if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in weights
               and not any(a.name == "group" and a.i > 1 for a in n.attribute)]
    ends = {learned[0].input[1], learned[-1].input[1]} if len(learned) > 2 else set()
    return model, [n.name for n in learned if n.input[1] not in ends]


def quantize(fp32: Path, out: Path, samples: list, pre, label: str = "") -> dict:
    """Write the int8 model of ``fp32`` to ``out``; return what the sidecar records of it
    (``label``: what error messages start with)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    # read (with progress) before onnxruntime runs: its output is silenced while it calibrates
    images = [_image(sample, pre, resized=True) for sample in progress.track(samples, f"int8: reading {len(samples)} calibration images", total=len(samples))]

    class Calibration(CalibrationDataReader):
        """One training image per step, at the network size (64 of them: a few tens of MB).
        The calibrating graph keeps only each tensor's min and max per image.
        (``CalibMaxIntermediateOutputs`` would bound that but drops the batches before each
        bound in onnxruntime 1.31: it is not used.)"""

        def __init__(self):
            self.pending = iter(images)

        def get_next(self):
            image = next(self.pending, None)
            return None if image is None else {"image": image}

    model, targets = _prepared(fp32)
    if not targets:
        raise DataError(f"{label}the graph has no {' or '.join(QUANTIZED_OPS)} layer with constant weights to quantise; export it without --int8")
    chatter = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing": onnxruntime's optimiser does it when the session loads
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            quantize_static(model, str(out), Calibration(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
                            nodes_to_quantize=targets, per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    except Exception as exc:  # onnxruntime's own errors; keep the first line
        raise DataError(f"{label}onnxruntime could not quantise the graph: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        root.setLevel(level)
    return {"tool": "onnxruntime.quantization.quantize_static", "onnxruntime": ort.__version__, "format": "QDQ",
            "activations": "uint8, per tensor, MinMax calibration", "weights": "int8 (7-bit range: reduce_range), per output channel, symmetric",
            "quantized_ops": list(QUANTIZED_OPS), "quantized_nodes": len(targets), "graph_optimization_level": GRAPH_OPTIMIZATION}


def _session(path: Path, level: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(fp32: Path, int8: Path, method, threshold_raw: float, data_root=None, label: str = "") -> dict:
    """AP and image AUROC of both models on the run's test split (raw scores, as evaluation
    ranks them), their differences, and how many test decisions (raw >= threshold) differ.
    Images go one at a time at their own size, as a predictor feeds them (the graph resizes),
    each model at the optimisation level its predictor uses."""
    from ..evaluate.metrics import average_precision, roc_auc
    from ..evaluate.run_eval import read_test_split

    _, test = read_test_split(method.config, data_root)
    labels = np.array([s.is_defective for s in test])
    if labels.all() or not labels.any():
        raise DataError(f"{label}dataset {method.config.dataset}: the test split has {len(test)} images of one class; the int8 model's AP and AUROC cannot be checked")
    sessions = _session(fp32, "all"), _session(int8, GRAPH_OPTIMIZATION)
    scores = np.empty((len(test), 2, 2))  # image, (fp32, int8), (score, raw)
    for i, sample in enumerate(progress.track(test, f"int8: checking fp32 and int8 on {len(test)} test images", total=len(test))):
        image = _image(sample, method.pre)
        scores[i] = [[float(v[0]) for v in session.run(["score", "raw"], {"image": image})] for session in sessions]
    (score_fp32, reference), (score_int8, quantized) = scores[:, 0].T, scores[:, 1].T
    for name, values in (("fp32", scores[:, 0]), ("int8", scores[:, 1])):
        if not np.isfinite(values).all():
            raise DataError(f"{label}the {name} model gave non-finite scores for {int(np.sum(~np.isfinite(values).all(1)))} of {len(test)} test images; not written")
    result = {"images": len(test), "defective": int(labels.sum())}
    for key, metric in (("ap", average_precision), ("auroc", roc_auc)):
        a, b = metric(labels, reference), metric(labels, quantized)
        result.update({f"{key}_fp32": a, f"{key}_int8": b, f"{key}_difference": b - a})
    result["max_score_difference"] = float(np.abs(score_int8 - score_fp32).max())
    result["max_raw_difference"] = float(np.abs(quantized - reference).max())
    result["changed_decisions"] = int(np.sum((reference >= threshold_raw) != (quantized >= threshold_raw)))
    return result


def accuracy_problem(check: dict) -> str | None:
    """Why the int8 model fails the check, in one line; None when it passes (NaN fails)."""
    if abs(check["ap_difference"]) <= ACCURACY_TOLERANCE and abs(check["auroc_difference"]) <= ACCURACY_TOLERANCE:
        return None
    return (f"the int8 model misses the accuracy check on the test split ({check['images']} images): "
            f"AP {check['ap_int8']:.4f} vs {check['ap_fp32']:.4f} fp32 ({check['ap_difference']:+.4f}), "
            f"AUROC {check['auroc_int8']:.4f} vs {check['auroc_fp32']:.4f} ({check['auroc_difference']:+.4f}); "
            f"each may move by {ACCURACY_TOLERANCE} at most")
