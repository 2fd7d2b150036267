"""``--resize pad``: images keep their aspect ratio (zeros at the right or bottom up to the
input's), the targets follow, and heatmaps are cropped back to the image, the same in the run
folder's predictor, the ONNX model and the service."""

from __future__ import annotations

import numpy as np
import pytest

from defectkit.data.preprocess import Preprocessing, canvas_size, heatmap_to_image, network_input, pad_to_aspect
from defectkit.data.sample import Sample


@pytest.mark.parametrize("height, width, size", [(100, 37, (64, 64)), (37, 100, (64, 64)), (128, 64, (128, 64)), (300, 90, (64, 160)), (90, 300, (64, 160))])
def test_the_canvas_scales_both_sides_alike(height, width, size):
    canvas_h, canvas_w = canvas_size(height, width, size)
    assert canvas_h >= height and canvas_w >= width and (canvas_h == height or canvas_w == width)
    sx, sy = size[0] / canvas_w, size[1] / canvas_h
    assert abs(sx - sy) / max(sx, sy) <= 1 / min(canvas_h, canvas_w)  # rounding of one pixel at most
    image = np.random.default_rng(0).integers(1, 256, (height, width, 3), dtype=np.uint8)
    padded = pad_to_aspect(image, size)
    assert padded.shape == (canvas_h, canvas_w, 3) and (padded[:height, :width] == image).all()
    assert padded[height:].sum() == 0 and padded[:, width:].sum() == 0


def test_network_input_in_pad_mode_is_the_image_scaled_alike_then_zeros():
    import cv2

    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (12, 5), dtype=np.uint8)
    image = cv2.resize(small, (50, 120), interpolation=cv2.INTER_CUBIC)  # smooth, 120 x 50 (H x W)
    x = network_input(image, (64, 64), "pad")[0]
    content_w = round(50 * 64 / 120)  # 27 of 64 columns hold the image
    assert x.shape == (64, 64)
    assert np.abs(x[:, content_w + 1 :]).max() == 0.0  # the padding, beyond one column of blending
    expected = cv2.resize(image.astype(np.float32) / 255, (content_w, 64), interpolation=cv2.INTER_LINEAR)
    assert np.abs(x[:, : content_w - 1] - expected[:, : content_w - 1]).mean() < 0.01  # an independent resize of the image alone
    stretched = network_input(image, (64, 64))
    assert np.abs(stretched[0] - x).max() > 0.1  # stretch is another picture


def test_targets_and_heatmaps_follow_the_canvas(tmp_path):
    import cv2

    image = np.full((120, 40), 128, np.uint8)
    mask = np.zeros((120, 40), np.uint8)
    mask[40:80, 10:30] = 255
    cv2.imwrite(str(tmp_path / "x.png"), image)
    cv2.imwrite(str(tmp_path / "x_mask.png"), mask)
    sample = Sample("x", tmp_path / "x.png", True, mask_path=tmp_path / "x_mask.png")
    pre = Preprocessing(input_size=(64, 64), dilate=0, weighted_segmentation=False, resize="pad")
    x, target, weights = pre.load(sample)
    assert x.shape == (1, 64, 64) and target.shape == (8, 8)
    columns = target.sum(0)
    assert columns[4:].sum() == 0 and columns[:3].sum() > 0  # the defect on the image's side (its 21 of 64 columns)
    stretched = Preprocessing(input_size=(64, 64), dilate=0, weighted_segmentation=False).load(sample)[1]
    assert stretched.sum(0)[4:].sum() > 0  # stretched, the defect spreads over the width

    heat = np.zeros((64, 64), np.float32)
    heat[:, :21] = 1.0  # the image's columns on the canvas
    back = heatmap_to_image(heat, 120, 40, (64, 64), "pad")
    assert back.shape == (120, 40) and back[:, :36].min() > 0.9  # cropped: the image's area only
    assert heatmap_to_image(heat, 120, 40, (64, 64)).shape == (120, 40)


@pytest.fixture(scope="module")
def pad_run(tmp_path_factory):
    from defectkit.data.synthetic import generate
    from defectkit.evaluate.run_eval import evaluate_run
    from defectkit.methods.registry import get_method
    from defectkit.methods.trainer import fit

    data = generate(tmp_path_factory.mktemp("pad") / "synthetic", n_train_good=4, n_train_defective=2, n_test_good=3, n_test_defective=3, size=(64, 128), seed=8)
    config = get_method("segdec").Config(dataset="synthetic", data_root=str(data), preset="tiny", input_size=(128, 128), resize="pad", epochs=1, batch_size=4)
    run = fit(config, tmp_path_factory.mktemp("pad-run") / "run", log=lambda m: None)
    evaluate_run(run, log=lambda m: None)
    return run, data


def test_a_pad_run_records_it_and_every_predictor_crops_alike(pad_run, tmp_path):
    pytest.importorskip("onnxruntime")
    import defectkit
    from defectkit import runs
    from defectkit.infer.export import export_onnx, sidecar_path
    from defectkit.runs import read_json

    run, data = pad_run
    assert runs.read_yaml(run / runs.CONFIG)["train"]["resize"] == "pad"
    images = sorted(str(p) for p in (data / "test").rglob("*.png"))
    torch_predictor = defectkit.load(run)
    assert torch_predictor.pre.resize == "pad"
    model = export_onnx(run, tmp_path / "m.onnx", log=lambda m: None)  # the export's own check scores padded images both ways
    meta = read_json(sidecar_path(model))
    assert meta["input"]["resize"] == "pad" and meta["format_version"] == 3
    onnx_predictor = defectkit.load(model)
    for a, b in zip(torch_predictor.predict_batch(images), onnx_predictor.predict_batch(images)):
        assert a.heatmap.shape == b.heatmap.shape == (128, 64)
        assert b.score == pytest.approx(a.score, abs=1e-4) and np.abs(a.heatmap - b.heatmap).max() < 1e-3


def test_the_service_crops_the_heatmap_of_a_pad_run(pad_run):
    pytest.importorskip("fastapi")
    import base64
    import warnings

    import cv2

    import defectkit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from defectkit.serve import create_app

    run, data = pad_run
    image = sorted((data / "test" / "defective").glob("*.png"))[0]
    expected = defectkit.load(run).predict(image)
    with TestClient(create_app(run)) as client:
        answer = client.post("/predict?heatmap=map", files=[("files", (image.name, image.read_bytes(), "image/png"))])
        assert answer.status_code == 200, answer.text
        result = answer.json()["results"][0]
    assert result["score"] == pytest.approx(expected.score, abs=1e-6)
    png = base64.b64decode(result["heatmap_png"].split(",", 1)[-1])
    served = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
    assert served.shape[:2] == (128, 64)
    scale = defectkit.load(run).heatmap_scale
    assert np.abs(served - np.clip(expected.heatmap / scale, 0, 1)).max() <= 1 / 255 + 1e-6  # the predictor's cropped map, in 8 bits
