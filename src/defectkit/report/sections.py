"""The report's sections for one run, and the per-fold table of a cross-validation."""

from __future__ import annotations

import math

import numpy as np

from .. import charts
from ..evaluate import metrics as M
from .data import RunData
from .gallery import KINDS, Card, shown_size
from .html import anchor, details, esc, figure, fmt, heading, hint, note, num, row, side_by_side, table, text

SETTINGS = (  # the training settings that say what a run is; the rest sit in config.yaml below
    ("preset", "preset"),
    ("input_size", "input size (width × height)"),
    ("channels", "channels"),
    ("dataset", "dataset"),
    ("data_root", "data root (training)"),
    ("split", "split"),
    ("fold", "fold"),
    ("epochs", "epochs"),
    ("batch_size", "batch size"),
    ("learning_rate", "learning rate"),
    ("seed", "seed"),
)
METRICS = (  # metrics.json keys in reading order, with what they mean; unknown keys follow
    ("ap", "average precision"),
    ("auroc", "area under the ROC curve"),
    ("f1", "F1 at the best-F1 threshold"),
    ("precision", "precision at the best-F1 threshold"),
    ("recall", "recall at the best-F1 threshold"),
    ("threshold", "best-F1 threshold (on the evaluated split)"),
    ("tp", "true positives at the best-F1 threshold"),
    ("fp", "false positives at the best-F1 threshold"),
    ("fn", "false negatives at the best-F1 threshold"),
    ("tn", "true negatives at the best-F1 threshold"),
    ("fp_at_fn0", "false positives when no defect may be missed"),
    ("threshold_fn0", "threshold that misses no defect"),
    ("decision_threshold", "decision threshold (used in production)"),
    ("threshold_source", "where the decision threshold comes from"),
    ("threshold_quantile", "quantile of good-image scores"),
    ("threshold_images", "images the threshold was set on"),
    ("pixel_auroc", "pixel AUROC"),
    ("pixel_ap", "pixel AP"),
    ("aupro", "AUPRO (up to FPR 0.3)"),
    ("pixel_size", "pixel metrics computed at (width × height)"),
    ("pixel_images", "images in the pixel metrics"),
    ("n_images", "evaluated images"),
    ("n_defective", "defective images among them"),
    ("method", "method"),
    ("dataset", "dataset"),
    ("split", "split"),
    ("fold", "fold"),
    ("weights", "weights evaluated"),
)
SECTIONS = (("run", "Run"), ("metrics", "Metrics"), ("curves", "Curves"), ("decisions", "Decisions"), ("gallery", "Gallery"), ("training", "Training"))


def units(d: RunData) -> str:
    if d.raw_is_logit:
        return "Scores are defect probabilities; ranking and decisions use their logits (a probability can round to 1.0), shown beside."
    return f"Scores are {d.method.name}'s {d.method.score_text}; thresholds are in the same units."


def threshold_text(d: RunData) -> str:
    if d.raw_is_logit:
        return f"probability {fmt(d.threshold)} (logit {fmt(d.threshold_raw)})"
    return fmt(d.threshold_raw)


def raw_axis(d: RunData) -> str:
    return "logit (the network's raw score)" if d.raw_is_logit else "anomaly score"


# ------------------------------------------------------------------------------------ run


def settings_table(d: RunData) -> str:
    train = d.config.to_dict()
    model = d.saved.get("model")
    rows = [row([text(d.method.name)], "method"), row([text(model.get("name") if isinstance(model, dict) else None)], "model")]
    # settings as given (learning rate 1, not 1.0000)
    rows += [row([text(f"{v:g}" if isinstance(v := train.get(key), float) else v)], label) for key, label in SETTINGS]
    return table(["setting", "value"], rows)


def data_table(d: RunData) -> str:
    if d.parts is None:
        return note(
            f"The dataset could not be read ({d.data_error}). The data summary and the ground-truth outlines need it; "
            "if the data has moved, pass data_root."
        )
    order = ["train", "validation", "test"]
    splits = sorted(d.parts, key=lambda s: (order.index(s) if s in order else len(order), s))
    rows = []
    for split in splits:
        samples = d.parts[split]
        defective = [s for s in samples if s.is_defective]
        labelled = sum(s.pixel_labelled and s.has_mask for s in defective)
        rows.append(row([num(len(samples)), num(len(samples) - len(defective)), num(len(defective)), num(labelled)], split, f' data-split="{esc(split)}"'))
    return hint(f"read from {d.data_root}") + table(["split", "images", "good", "defective", "pixel-labelled defective"], rows, numeric=(1, 2, 3, 4))


def run_section(d: RunData) -> str:
    import yaml

    config_yaml = yaml.safe_dump(d.saved, sort_keys=False)
    return side_by_side(
        f"<div>{heading(4, 'Configuration')}{settings_table(d)}</div>",
        f"<div>{heading(4, 'Data')}{data_table(d)}</div>",
    ) + details("config.yaml", f"<pre>{esc(config_yaml)}</pre>")


# -------------------------------------------------------------------------------- metrics


def metrics_section(d: RunData) -> str:
    known = [k for k, _ in METRICS]
    keys = [k for k in known if k in d.metrics]
    keys += sorted(k for k in d.metrics if k not in known and not (k.endswith("_logit") and k.removesuffix("_logit") in d.metrics))
    labels = dict(METRICS)
    with_logits = any(f"{k}_logit" in d.metrics for k in keys)
    rows = []
    for key in keys:
        value = d.metrics[key]
        cells = [f'<td class="value{" num" if isinstance(value, (int, float)) else ""}">{fmt(value)}</td>']
        if with_logits:
            logit = d.metrics.get(f"{key}_logit")
            cells.append(f'<td class="logit num">{fmt(logit) if logit is not None else ""}</td>')
        header = f'<th scope="row">{esc(labels.get(key, key))} <code>{esc(key)}</code></th>'
        rows.append(f'<tr data-key="{esc(key)}">{header}{"".join(cells)}</tr>')
    header = ["metric", "value"] + (["logit"] if with_logits else [])
    return hint(units(d)) + table(header, rows, numeric=(1, 2))


# --------------------------------------------------------------------------------- curves


def curves_section(d: RunData) -> str:
    blocks = []
    if d.labels.all() or not d.labels.any():
        blocks.append(note("PR and ROC curves need both good and defective images; the evaluated split has only one kind."))
    else:
        confusion = d.confusion()
        n_good, n_defective = int((~d.labels).sum()), int(d.labels.sum())
        ranked = f"ranked by {raw_axis(d)}, {len(d.labels)} images"
        blocks.append(figure(charts.pr_chart(d.labels, d.raw, "PR curve", (confusion["recall"], confusion["precision"])), ranked))
        blocks.append(figure(charts.roc_chart(d.labels, d.raw, "ROC curve", (confusion["fp"] / n_good, confusion["tp"] / n_defective)), ranked))
    blocks.append(figure(charts.histogram(
        [("good", d.raw[~d.labels], charts.GOOD), ("defective", d.raw[d.labels], charts.DEFECTIVE)],
        "Scores of good and defective images", raw_axis(d), threshold=d.threshold_raw, threshold_label="decision threshold",
    ), f"decision threshold {threshold_text(d)}" + ("; probabilities pile up at 0 and 1, so logits are shown" if d.raw_is_logit else "")))
    return side_by_side(*blocks)


def decisions_section(d: RunData) -> str:
    c = d.confusion()
    def count(key: str, kind: str) -> str:
        return f'<td class="{kind} num" data-count="{key}">{fmt(c[key])}</td>'

    rows = [row([count("tp", "hit"), count("fn", "miss")], "defective"), row([count("fp", "miss"), count("tn", "hit")], "good")]
    summary = table(["", ""], [
        row([count("precision", "")], "precision TP / (TP + FP)"),
        row([count("recall", "")], "recall TP / (TP + FN)"),
    ])
    source = d.metrics.get("threshold_source")
    return hint(f"At the decision threshold the run uses in production, {threshold_text(d)}" + (f"; set from {source}." if source else ".")) + side_by_side(
        table(["actual \\ predicted", "defective", "good"], rows, cls="confusion"), summary
    )


# -------------------------------------------------------------------------------- gallery


def card_html(d: RunData, card: Card) -> str:
    if card.picture:
        # the shown size as attributes: the card is sized from them, and the page keeps the
        # pictures' shape when it scales them down
        size = ' width="{}" height="{}"'.format(*shown_size(*card.size)) if card.size else ""
        pictures = f'<img src="{card.picture}"{size} alt="{esc(card.name)}">'
        pictures += f'<img src="{card.heat}"{size} alt="heatmap of {esc(card.name)}">' if card.heat else ""
    else:
        pictures = '<div class="missing">image not available</div>'
    score = f"score {fmt(card.score)}" + (f" · logit {fmt(card.logit)}" if card.logit is not None else "")
    notes = "".join(f'<div class="card-note">{esc(n)}</div>' for n in card.notes)
    caption = f'<figcaption><div class="name">{esc(card.name)}</div><div>{score}</div>{notes}</figcaption>'
    return f'<figure class="card" data-name="{esc(card.name)}"><div class="pictures">{pictures}</div>{caption}</figure>'


def gallery_section(d: RunData, cards: dict[str, list[Card]], notes: list[str], level: int, prefix: str) -> str:
    if not cards:
        return hint("No gallery (gallery_size 0).")
    scale = "defect probability from 0 in blue to 1 in red" if d.raw_is_logit else "blue to red; a pixel at the image threshold is mid-scale"
    parts = [hint(f"Left: the image, the ground-truth mask outlined in magenta; right: the heatmap overlay ({scale}). Threshold {threshold_text(d)}.")]
    parts += [note(n) for n in notes]
    for kind in KINDS:
        group = cards.get(kind.key, [])
        parts.append(heading(level, f"{kind.title} ({len(group)})", anchor(prefix, kind.key)))
        if group:
            parts.append(hint(kind.what.capitalize() + "."))
            parts.append(f'<div class="gallery" data-kind="{esc(kind.key)}">{"".join(card_html(d, c) for c in group)}</div>')
        else:
            parts.append(f'<p class="hint" data-kind="{esc(kind.key)}">{esc(kind.none)}</p>')
    return "".join(parts)


# ------------------------------------------------------------------------------- training


def column(rows: list[dict], key: str) -> np.ndarray:
    values = []
    for r in rows:
        try:
            values.append(float(r.get(key) or "nan"))
        except ValueError:
            values.append(float("nan"))
    return np.array(values)


def training_section(d: RunData) -> str:
    rows = d.train_log
    if not rows:
        return hint("No train_log.csv in the run folder.")
    epochs = column(rows, "epoch")
    losses = [k for k in rows[0] if k.startswith("loss")]
    markers = len(rows) <= 40
    series = [charts.Series(k, epochs, column(rows, k), charts.LINE_COLOURS[i % len(charts.LINE_COLOURS)], markers=markers) for i, k in enumerate(losses)]
    blocks = [figure(charts.line_chart(series, "Training losses", "epoch", "loss", integer_x=True))]
    val_ap = column(rows, "val_ap") if "val_ap" in rows[0] else np.array([])
    if np.isfinite(val_ap).any():
        seen = np.isfinite(val_ap)
        blocks.append(figure(charts.line_chart(
            [charts.Series("validation AP", epochs[seen], val_ap[seen], charts.ACCENT, markers=True)],
            "Validation AP", "epoch", "AP", ylim=(0, 1.02), integer_x=True,
        )))
    seconds = column(rows, "seconds")
    total = float(np.nansum(seconds)) if np.isfinite(seconds).any() else math.nan
    return hint(f"{len(rows)} epoch(s) logged" + (f", {total:.1f} s of training." if math.isfinite(total) else ".")) + side_by_side(*blocks)


# ---------------------------------------------------------------------------------- pages


def run_body(d: RunData, cards: dict[str, list[Card]], notes: list[str], level: int, prefix: str) -> str:
    builders = {
        "run": lambda: run_section(d),
        "metrics": lambda: metrics_section(d),
        "curves": lambda: curves_section(d),
        "decisions": lambda: decisions_section(d),
        "gallery": lambda: gallery_section(d, cards, notes, level + 1, prefix),
        "training": lambda: training_section(d),
    }
    return "".join(f'<section id="{anchor(prefix, key)}">{heading(level, title)}{builders[key]()}</section>' for key, title in SECTIONS)


def folds_table(folds: list[RunData]) -> str:
    """Per-fold metrics and the protocol's combination (means of AP/AUROC/F1, summed counts)."""
    header = ["fold", "method", "AP", "AUROC", "best F1", "FP", "FN", "FP at FN = 0", "images", "defective", "FP at threshold", "FN at threshold"]
    combined = M.combine_folds([d.metrics for d in folds])
    decisions = [d.confusion() for d in folds]

    def cells(m: dict, c: dict) -> list[str]:
        keys = ("ap", "auroc", "f1", "fp", "fn", "fp_at_fn0", "n_images", "n_defective")
        return [num(m[k], k) for k in keys] + [num(c["fp"], "decision_fp"), num(c["fn"], "decision_fn")]

    rows = [row([text(d.method.name)] + cells(d.metrics, c), d.name, f' data-fold="{esc(d.name)}"') for d, c in zip(folds, decisions)]
    total = {k: sum(c[k] for c in decisions) for k in ("fp", "fn")}
    rows.append(row([text("")] + cells(combined, total), f"combined ({len(folds)} folds)", ' class="combined" data-fold="combined"'))
    return hint("Combined: AP, AUROC and F1 are means over the folds; counts are sums (each fold tests other images).") + table(header, rows, numeric=range(2, 12))
