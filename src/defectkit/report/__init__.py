"""``defectkit report``: one self-contained HTML page about an evaluated run, to read or pass on.

The page holds everything inside it (stylesheet, SVG charts, JPEG data URIs), so it opens
offline and can be mailed as one file. It shows the run's configuration and data, its
metrics, PR and ROC curves, score histograms and confusion counts at the production
threshold, a gallery of the worst mistakes and some true detections with heatmaps, and the
training curves. A folder of per-fold runs (fold0/, fold1/, ...) gets one page with the
cross-validation table first.

Everything but the gallery comes from the run folder's files; only the gallery's images are
read and scored again, so a report of a large test split stays quick.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from ..files import atomic_write, refuse_existing

REPORT = "report.html"

__all__ = ["REPORT", "write_report"]


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str = "cpu",
    gallery_size: int = 6,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> Path:
    """Write the report of ``run_dir`` (a run folder, or a folder of per-fold run folders) to
    ``out`` (default ``RUN_DIR/report.html``) and return its path.

    ``data_root`` points at the dataset when it has moved since training; ``gallery_size`` is
    the number of images per gallery group. Raises :class:`~defectkit.errors.DataError` for a
    folder that is no run, or a run that has not been evaluated; an existing ``out`` is
    replaced only with ``overwrite``."""
    from .. import __version__
    from . import html, sections
    from .data import load_run, run_folders
    from .gallery import make_cards, render

    if gallery_size < 0:
        raise ConfigError(f"gallery_size must be 0 or more, got {gallery_size}")
    run_dir = Path(run_dir)
    folders, cross_validation = run_folders(run_dir)
    path = Path(out) if out is not None else run_dir / REPORT
    refuse_existing([path], overwrite)
    folds = [load_run(folder, data_root) for folder in folders]  # all checked before any scoring
    name = run_dir.resolve().name
    stamp = f"generated {datetime.datetime.now():%Y-%m-%d %H:%M} by defectkit {__version__}"
    bodies = []
    for d in folds:
        cards = make_cards(d, gallery_size) if gallery_size else {}
        notes = render(d, cards, device, log)
        prefix = d.name if cross_validation else ""
        bodies.append(sections.run_body(d, cards, notes, level=3 if cross_validation else 2, prefix=prefix))
    if cross_validation:
        first = folds[0]
        subtitle = f"cross-validation: {len(folds)} folds of {first.method.name} on {first.config.dataset}; {stamp}"
        body = f'<section id="cross-validation">{html.heading(2, "Cross-validation")}{sections.folds_table(folds)}</section>'
        body += "".join(
            html.details(f"{d.name}: {d.method.name}, AP {html.fmt(d.metrics.get('ap'))}", b, open=True, cls="fold", id=html.anchor(d.name))
            for d, b in zip(folds, bodies)
        )
        links = [("cross-validation", "Cross-validation")] + [(html.anchor(d.name), d.name) for d in folds]
    else:
        d = folds[0]
        subtitle = f"{d.method.name} on {d.config.dataset}, {len(d.rows)} evaluated images; {stamp}"
        body = bodies[0]
        links = [(html.anchor("", key), title) for key, title in sections.SECTIONS]
    page = html.page(f"defectkit report: {name}", subtitle, links, body)
    atomic_write(path, page.encode("utf-8"))
    log(f"report: {path}")
    return path
