"""The HTML report: one self-contained page whose numbers agree with the run folder's files,
for every method, for a cross-validation folder, and when the data has moved."""

from __future__ import annotations

import html
import re
import shutil

import numpy as np
import pytest

import defectkit
from defectkit import runs
from defectkit.data.synthetic import generate
from defectkit.errors import DataError
from defectkit.evaluate.run_eval import evaluate_run
from defectkit.methods.trainer import fit
from defectkit.methods.registry import get_method, method_of_run
from defectkit.report import write_report

SETTINGS = {
    "segdec": dict(preset="tiny", input_size=(64, 128), dilate=3, epochs=2, batch_size=4, validate_every=1),
    "ear": dict(preset="tiny", input_size=(32, 64), epochs=1, batch_size=4),
}
GALLERY = 3  # below the 4 images per class, so the gallery's cut shows


def quiet(_):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    return generate(root, n_train_good=6, n_train_defective=3, n_test_good=4, n_test_defective=4, size=(64, 128), seed=2)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = {}
    for name, settings in SETTINGS.items():
        method = get_method(name)
        run = tmp_path_factory.mktemp(name) / "run"
        fit(method.Config(dataset="synthetic", data_root=str(data), **settings), run, log=quiet)
        evaluate_run(run)
        out[name] = run
    return out


@pytest.fixture(scope="module", params=list(SETTINGS))
def reported(request, trained):
    run = trained[request.param]
    lines = []
    path = write_report(run, gallery_size=GALLERY, log=lines.append)
    assert path == run / "report.html" and lines[-1] == f"report: {path}"
    return run, path.read_text(encoding="utf-8")


def copy_run(run, target):
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("report.html"))
    return target


def predictions(run):
    """(rows, labels, raw scores the decisions compare, threshold in those units), recomputed here."""
    rows = runs.read_csv(run / runs.PREDICTIONS)
    labels = np.array([r["label"] == "1" for r in rows])
    logit = method_of_run(run).raw_is_logit
    raw = np.array([float(r["logit"] if logit else r["score"]) for r in rows])
    return rows, labels, raw, method_of_run(run).run_threshold(run)["value"]


def cell(page, key, attribute="data-key"):
    match = re.search(rf'<td[^>]*{attribute}="{key}"[^>]*>([^<]*)<', page)
    assert match, f"no cell for {key}"
    return match.group(1)


def metric_cells(page):
    """{metrics.json key: (value text, logit text or None)} from the metrics table."""
    out = {}
    for key, body in re.findall(r'<tr data-key="([^"]+)">(.*?)</tr>', page):
        value = re.search(r'<td class="value[^"]*">([^<]*)</td>', body).group(1)
        logit = re.search(r'<td class="logit num">([^<]*)</td>', body)
        out[key] = (html.unescape(value), logit.group(1) if logit else None)
    return out


def gallery_group(page, kind):
    """(card names in page order, the group's markup) of one gallery group."""
    start = page.index(f'data-kind="{kind}"')
    end = min(i for i in (page.find('data-kind="', start + 1), page.find('id="training"', start)) if i > 0)
    segment = page[start:end]
    return [html.unescape(n) for n in re.findall(r'<figure class="card" data-name="([^"]*)"', segment)], segment


def test_metrics_table_shows_metrics_json(reported):
    run, page = reported
    metrics = runs.read_json(run / runs.METRICS)
    cells = metric_cells(page)
    for key, value in metrics.items():
        if key.endswith("_logit"):
            assert float(cells[key.removesuffix("_logit")][1]) == pytest.approx(value, rel=5e-3, abs=5e-5), key
        elif isinstance(value, float) and np.isfinite(value):
            assert float(cells[key][0]) == pytest.approx(value, rel=5e-3, abs=5e-5), key
        elif isinstance(value, (int, str)) and not isinstance(value, bool):
            assert cells[key][0] == str(value), key
    assert f"PR curve: AP {metrics['ap']:.4f}" in page and f"ROC curve: AUROC {metrics['auroc']:.4f}" in page


def test_confusion_counts_match_predictions_at_the_run_threshold(reported):
    run, page = reported
    _, labels, raw, threshold = predictions(run)
    assert threshold == pytest.approx(defectkit.load(run).threshold_raw)  # the production threshold
    flagged = raw >= threshold
    expected = {"tp": flagged & labels, "fp": flagged & ~labels, "fn": ~flagged & labels, "tn": ~flagged & ~labels}
    for key, hits in expected.items():
        assert int(cell(page, key, "data-count")) == int(hits.sum()), key
    tp, fp, fn = (int(expected[k].sum()) for k in ("tp", "fp", "fn"))
    if tp + fp:
        assert float(cell(page, "precision", "data-count")) == pytest.approx(tp / (tp + fp), abs=5e-5)
    assert float(cell(page, "recall", "data-count")) == pytest.approx(tp / (tp + fn), abs=5e-5)


def test_gallery_shows_the_worst_mistakes_in_order(reported):
    run, page = reported
    rows, labels, raw, threshold = predictions(run)
    high_first = sorted(range(len(rows)), key=lambda i: -raw[i])
    low_first = sorted(range(len(rows)), key=lambda i: raw[i])
    expected = {
        "false-positives": [rows[i]["name"] for i in high_first if raw[i] >= threshold and not labels[i]][:GALLERY],
        "false-negatives": [rows[i]["name"] for i in low_first if raw[i] < threshold and labels[i]][:GALLERY],
        "true-detections": [rows[i]["name"] for i in high_first if raw[i] >= threshold and labels[i]][:GALLERY],
    }
    for kind, names in expected.items():
        shown, markup = gallery_group(page, kind)
        assert shown == names, kind
        if not names:
            assert f">no {kind.removesuffix('s').replace('-', ' ')}<" in markup
    cards = sum(len(n) for n in expected.values())
    assert cards and page.count('<img src="data:image/jpeg;base64,') == 2 * cards  # picture and heatmap overlay
    if any(labels[i] and raw[i] >= threshold for i in range(len(rows))):
        assert "magenta" in page


def test_page_is_self_contained(reported):
    _, page = reported
    assert "http://" not in page and "https://" not in page
    assert all(src.startswith("data:") for src in re.findall(r'\b(?:src|href)="([^"#][^"]*)"', page))
    assert "<script" not in page and "@import" not in page and "url(" not in page
    targets = set(re.findall(r'href="#([^"]+)"', page))
    assert targets and targets <= set(re.findall(r'\bid="([^"]+)"', page))


def test_histogram_and_training_curves(reported):
    run, page = reported
    logit = method_of_run(run).raw_is_logit
    log = runs.read_csv(run / runs.TRAIN_LOG)
    validated = any(row["val_ap"] for row in log)  # the synthetic data's validation part has both kinds
    assert validated and "Validation AP" in page
    assert page.count('<svg class="chart"') == 5  # PR, ROC, histogram, losses, validation AP
    assert ("logit (the network" in page) == logit and ("anomaly score</text>" in page) != logit
    for column in log[0]:
        if column.startswith("loss"):
            assert f">{column}</text>" in page


def test_no_validation_ap_chart_without_validation(trained, tmp_path):
    run = copy_run(trained["segdec"], tmp_path / "run")
    rows = runs.read_csv(run / runs.TRAIN_LOG)
    runs.write_csv(run / runs.TRAIN_LOG, list(rows[0]), ([*r.values()][:-2] + ["", r["seconds"]] for r in rows))
    page = write_report(run, out=tmp_path / "elsewhere" / "r.html", gallery_size=0, log=quiet).read_text()
    assert "Validation AP" not in page and page.count('<svg class="chart"') == 4 and "No gallery" in page
    assert not (run / "report.html").exists()
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == ["r.html"]  # atomic: no temp file left


def test_cross_validation_folder(trained, tmp_path):
    folder = tmp_path / "cv"
    aps = [0.5, 0.7, 0.9]
    for fold, ap in enumerate(aps):
        run = copy_run(trained["segdec"], folder / f"fold{fold}")
        runs.write_json(run / runs.METRICS, {**runs.read_json(run / runs.METRICS), "ap": ap, "fp": fold})
    (folder / "notes").mkdir()  # neither run nor fold: ignored
    page = write_report(folder, gallery_size=1, log=quiet).read_text()
    rows = re.findall(r'<tr data-fold="([^"]+)">(.*?)</tr>', page)
    assert [name for name, _ in rows] == ["fold0", "fold1", "fold2"]
    for (_, body), ap in zip(rows, aps):
        assert float(cell(body, "ap")) == pytest.approx(ap)
    combined = re.search(r'<tr class="combined" data-fold="combined">(.*?)</tr>', page).group(1)
    assert float(cell(combined, "ap")) == pytest.approx(np.mean(aps), abs=5e-5)
    assert int(cell(combined, "fp")) == 0 + 1 + 2
    for fold in ("fold0", "fold1", "fold2"):  # every fold's own sections follow
        for section in ("metrics", "curves", "decisions", "gallery", "training"):
            assert f'id="{fold}-{section}"' in page
    assert page.count('<details class="fold"') == 3


def test_not_a_run_or_not_evaluated_is_a_data_error(trained, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=re.escape(str(empty))):
        write_report(empty, log=quiet)
    with pytest.raises(DataError, match="not found"):
        write_report(tmp_path / "missing", log=quiet)
    run = copy_run(trained["ear"], tmp_path / "unevaluated")
    (run / runs.METRICS).unlink()
    with pytest.raises(DataError, match=rf"{re.escape(str(run))}.*defectkit eval"):
        write_report(run, log=quiet)
    assert not (run / "report.html").exists()


def test_moved_data_still_gives_a_report(trained, data, tmp_path):
    run = copy_run(trained["segdec"], tmp_path / "run")
    moved = tmp_path / "moved"
    config = runs.read_yaml(run / runs.CONFIG)
    config["train"]["data_root"] = str(moved)
    runs.write_yaml(run / runs.CONFIG, config)
    (run / runs.PREDICTIONS).write_text((run / runs.PREDICTIONS).read_text().replace(str(data), str(moved)))
    page = write_report(run, gallery_size=1, log=quiet).read_text()
    assert "image not found: " + html.escape(str(moved)) in page and "pass data_root" in page
    assert "<img" not in page and 'class="card"' in page and "could not be read" in page and not moved.exists()
    page = write_report(run, data_root=data, gallery_size=1, log=quiet, overwrite=True).read_text()
    assert "not found" not in page and page.count("<img") == 2 * page.count('class="card"') > 0


LAYOUT = """() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  return Array.from(document.querySelectorAll(".gallery")).map(gallery => ({
    gallery: box(gallery),
    cards: Array.from(gallery.querySelectorAll(".card")).map(card => ({
      name: card.dataset.name,
      box: box(card),
      images: Array.from(card.querySelectorAll("img")).map(i => ({
        alt: i.alt, box: box(i), complete: i.complete, natural: [i.naturalWidth, i.naturalHeight],
      })),
    })),
  }));
}"""
SLACK = 0.5  # CSS pixels of rounding


def inside(inner, outer):
    return all(inner[i] >= outer[i] - SLACK for i in (0, 1)) and all(inner[i] <= outer[i] + SLACK for i in (2, 3))


def overlap(a, b):
    return min(a[2], b[2]) - max(a[0], b[0]) > SLACK and min(a[3], b[3]) - max(a[1], b[1]) > SLACK


def layout_problems(page):
    """What is wrong with the rendered gallery's layout: a picture (image, heatmap overlay, mask)
    not loaded, outside its card or drawn out of shape, a card outside its gallery, two cards
    on top of each other. Measured in the page (getBoundingClientRect)."""
    problems, cards = [], []
    for gallery in page.evaluate(LAYOUT):
        for card in gallery["cards"]:
            name, box = card["name"], card["box"]
            cards.append((name, box))
            if not inside(box, gallery["gallery"]):
                problems.append(f"card {name} {box} outside its gallery {gallery['gallery']}")
            for image in card["images"]:
                (width, height), shown = image["natural"], image["box"]
                if not (image["complete"] and width > 0 and height > 0):
                    problems.append(f"{image['alt']} not loaded")
                elif not inside(shown, box):
                    problems.append(f"{image['alt']} {shown} outside its card {box}")
                elif abs((shown[2] - shown[0]) / (shown[3] - shown[1]) / (width / height) - 1) > 0.05:
                    problems.append(f"{image['alt']} shown out of shape: {shown} for {width} x {height} pixels")
    problems += [f"cards {a} {p} and {b} {q} overlap" for i, (a, p) in enumerate(cards) for b, q in cards[i + 1 :] if overlap(p, q)]
    return cards, problems


def test_gallery_layout_for_any_image_shape(browser, tmp_path):
    """Every picture inside its card and no two cards overlapping, for square, very wide (8:1,
    Severstal's 1600 x 256) and very tall (1:8, KolektorSDD's 500 x 1250) images, at narrow
    to wide windows."""
    from types import SimpleNamespace

    from defectkit.report import html as H
    from defectkit.report.gallery import Card, draw
    from defectkit.report.sections import gallery_section

    rng = np.random.default_rng(0)
    shapes = {"square": (384, 384), "wide": (100, 800), "tall": (800, 100), "ksdd": (1250, 500), "severstal": (256, 1600), "small": (128, 64)}
    cards = []
    for name, (height, width) in shapes.items():
        card = Card(f"{name}_{width}x{height}_with_a_long_name_that_must_wrap.png", True, 0.9, None, tmp_path / name)
        image = rng.integers(0, 256, (height, width), dtype=np.uint8)
        draw(card, image, rng.random((height, width), dtype=np.float32), 1.0)
        cards.append(card)
    missing = Card("missing.png", False, 0.5, None, tmp_path / "missing.png", notes=["image not found: /elsewhere/missing.png"])
    groups = {"false-positives": cards + [missing], "false-negatives": cards[::-1], "true-detections": cards[1::2]}
    run = SimpleNamespace(raw_is_logit=False, threshold_raw=0.5)
    path = tmp_path / "gallery.html"
    path.write_text(H.page("gallery", "layout", [], gallery_section(run, groups, [], 2, "")), encoding="utf-8")
    for width in (480, 800, 1400, 1920):
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(path.as_uri())
        shown, problems = layout_problems(page)
        page.close()
        assert len(shown) == sum(len(g) for g in groups.values()), width
        assert not problems, (width, problems)


def test_report_renders_in_a_browser(reported, browser, tmp_path):
    run, _ = reported
    for width in (800, 1400, 1920):  # the gallery's layout, at a narrow, the reported and a wide window
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto((run / "report.html").as_uri())
        cards, problems = layout_problems(page)
        page.close()
        assert cards and not problems, (width, problems)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((run / "report.html").as_uri())
    charts = page.locator("svg.chart").all()
    assert len(charts) == 5  # PR, ROC, histogram, losses, validation AP
    for chart in charts:
        box = chart.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100
    images = page.evaluate("() => Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().height])")
    assert images and all(done and width > 0 and height > 0 for done, width, height in images)
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    assert not errors, errors
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("pr_curve.svg", "roc_curve.svg"):  # evaluation's curves, as files of their own
        page = browser.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((run / name).as_uri())
        box = page.locator("svg").bounding_box()
        assert box and box["width"] > 300 and box["height"] > 250, name
        fill = page.evaluate("() => getComputedStyle(document.querySelector('path.series')).fill")
        assert fill == "none", name  # the chart's stylesheet travels inside the file
        page.close()
    assert not errors, errors
