"""The gallery: which evaluated images to show, and their pictures as data URIs.

Only the chosen images are scored again (for their heatmaps); which ones are chosen comes
from predictions.csv, so the gallery agrees with the metrics and the confusion counts."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DefectkitError
from .data import RunData

DISPLAY_SIDE = 384  # longest side of a gallery picture: enough to see a defect, small in the file
SHOWN_HEIGHT = 240  # CSS pixels a picture is shown at on the page...
SHOWN_WIDTH = 480  # ...unless that makes it wider than this (Severstal's 1600 x 256 strips)
BATCH = 4  # images scored at once: bounds memory at full-size images
OUTLINE = (255, 0, 255)  # magenta: absent from the heatmap's jet colours


@dataclass(frozen=True)
class Kind:
    key: str
    title: str
    what: str
    none: str


KINDS = (
    Kind("false-positives", "Worst false positives", "good images with the highest scores at or above the threshold", "no false positive"),
    Kind("false-negatives", "Worst false negatives", "defective images with the lowest scores below the threshold", "no false negative"),
    Kind("true-detections", "True detections", "defective images at or above the threshold, highest score first", "no true detection"),
)


@dataclass
class Card:
    name: str
    defective: bool
    score: float
    logit: float | None
    image_path: Path
    sample: Any = None  # the dataset's Sample, when the data could be read
    picture: str | None = None  # data URI: the image with the ground-truth outline
    heat: str | None = None  # data URI: the heatmap overlay
    size: tuple[int, int] | None = None  # (width, height) of the pictures in pixels
    notes: list[str] = field(default_factory=list)


def select(data: RunData, size: int) -> dict[str, list[int]]:
    """Row indices of predictions.csv per kind (CSV order breaks ties)."""
    flagged = data.raw >= data.threshold_raw
    high_first = np.argsort(-data.raw, kind="stable")
    low_first = np.argsort(data.raw, kind="stable")
    return {
        "false-positives": [int(i) for i in high_first if flagged[i] and not data.labels[i]][:size],
        "false-negatives": [int(i) for i in low_first if not flagged[i] and data.labels[i]][:size],
        "true-detections": [int(i) for i in high_first if flagged[i] and data.labels[i]][:size],
    }


def make_cards(data: RunData, size: int) -> dict[str, list[Card]]:
    samples = data.test_samples()
    cards: dict[str, list[Card]] = {}
    for kind, indices in select(data, size).items():
        cards[kind] = []
        for i in indices:
            row, sample = data.rows[i], samples.get(data.rows[i]["name"])
            path = Path(sample.image_path) if sample is not None else Path(row["image"])
            logit = float(data.raw[i]) if data.raw_is_logit else None
            cards[kind].append(Card(row["name"], bool(data.labels[i]), float(data.scores[i]), logit, path, sample))
    return cards


def shown_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) in CSS pixels a picture of ``width`` x ``height`` pixels is shown at:
    SHOWN_HEIGHT tall, or SHOWN_WIDTH wide for a wide strip; the page scales it down further
    (keeping its shape) when its card is narrower."""
    scale = min(SHOWN_HEIGHT / height, SHOWN_WIDTH / width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def data_uri(rgb: np.ndarray) -> str:
    import cv2

    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def shrink(array: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    if factor >= 1:
        return array
    height, width = array.shape[:2]
    return cv2.resize(array, (max(1, round(width * factor)), max(1, round(height * factor))), interpolation=cv2.INTER_AREA)


def outline(card: Card, factor: float) -> list[np.ndarray]:
    """Ground-truth mask contours at the display scale; none for good images or without a mask."""
    import cv2

    from ..data.imageio import load_mask

    if card.sample is None or not card.defective:
        return []
    if not card.sample.has_mask:
        card.notes.append("no pixel annotation")
        return []
    try:
        mask = load_mask(card.sample)
    except DefectkitError as exc:
        card.notes.append(f"mask not readable: {exc}")
        return []
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [np.round((c + 0.5) * factor - 0.5).astype(np.int32) for c in contours]


def draw(card: Card, image: np.ndarray, heatmap: np.ndarray | None, heatmap_scale: float) -> None:
    import cv2

    from ..infer.predictor import overlay

    factor = min(1.0, DISPLAY_SIDE / max(image.shape[:2]))
    small = shrink(image, factor)
    contours = outline(card, factor)
    thickness = 1 if max(small.shape[:2]) < 256 else 2

    def with_outline(rgb: np.ndarray) -> np.ndarray:
        return cv2.drawContours(rgb, contours, -1, OUTLINE, thickness, lineType=cv2.LINE_AA) if contours else rgb

    rgb = cv2.cvtColor(small, cv2.COLOR_GRAY2RGB) if small.ndim == 2 else small.copy()
    card.size = (small.shape[1], small.shape[0])
    card.picture = data_uri(with_outline(rgb))
    if heatmap is not None:
        card.heat = data_uri(with_outline(overlay(small, shrink(heatmap, factor), scale=heatmap_scale)))


def render(data: RunData, cards: dict[str, list[Card]], device: str, log: Callable[[str], None]) -> list[str]:
    """Fill the cards' pictures; returns notes for the whole gallery (missing files, no model)."""
    import defectkit

    from ..data.imageio import read_image

    every = [c for group in cards.values() for c in group]
    missing = [c for c in every if not c.image_path.is_file()]
    for card in missing:
        card.notes.append(f"image not found: {card.image_path}")
    present = [c for c in every if c.image_path.is_file()]
    notes = []
    if missing:
        notes.append(
            f"{len(missing)} of {len(every)} gallery image(s) not found, e.g. {missing[0].image_path}. "
            "If the data has moved, pass data_root (the folder the run's dataset is in now)."
        )
    if not present:
        return notes
    log(f"report: scoring {len(present)} gallery image(s) of {data.run_dir}")
    try:
        predictor = defectkit.load(data.run_dir, device=device, weights=data.weights)
    except DefectkitError as exc:
        predictor = None
        notes.append(f"no heatmaps: the model could not be loaded ({exc})")
    channels = predictor.channels if predictor is not None else data.config.channels
    for start in range(0, len(present), BATCH):
        batch, images = [], []
        for card in present[start : start + BATCH]:
            try:  # read once: the same pixels are scored and drawn
                images.append(read_image(card.image_path, channels))
                batch.append(card)
            except DefectkitError as exc:
                card.notes.append(str(exc))
        heatmaps = [p.heatmap for p in predictor.predict_batch(images)] if predictor is not None and images else [None] * len(images)
        for card, image, heatmap in zip(batch, images, heatmaps):
            draw(card, image, heatmap, predictor.heatmap_scale if predictor is not None else 1.0)
    return notes
