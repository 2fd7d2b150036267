"""The ``defectkit`` command. Thin: it parses arguments and calls the library.

Heavy modules (torch, cv2, numpy, matplotlib) are imported inside the commands so that
``defectkit --help`` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import DefectkitError

app = typer.Typer(
    name="defectkit",
    help="Surface-defect detection for industrial inspection: datasets, training, evaluation, inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
datasets_app = typer.Typer(help="List, inspect and download datasets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _version(value: bool):
    if value:
        typer.echo(f"defectkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
):
    pass


@datasets_app.command("list")
def datasets_list():
    """The supported datasets, their layouts and published split lists."""
    from rich.table import Table

    from .data.datasets import DATASETS
    from .data.splits import available_splits

    table = Table(title="datasets")
    for column in ("name", "what", "layout", "official splits"):
        table.add_column(column, overflow="fold")
    for spec in DATASETS.values():
        splits = "-"
        if spec.has_official_splits:
            keys = available_splits(spec.name)
            splits = f"{len(keys)}: {keys[0]} .. {keys[-1]}, default {spec.default_split}"
            if spec.folds:
                splits += f"; {spec.fold_name} {spec.folds[0]}..{spec.folds[-1]}"
        table.add_row(spec.name, spec.title, spec.layout, splits)
    _console().print(table)


@datasets_app.command("inspect")
def datasets_inspect(
    dataset: str = typer.Option(..., "--dataset", "-d", help="ksdd, ksdd2, dagm, severstal, folder or synthetic."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the dataset (optional for synthetic)."),
    split: Optional[str] = typer.Option(None, "--split", help="Official split key (e.g. 33_33); default: the dataset's protocol split. 'all' shows only the totals."),
    check: bool = typer.Option(True, "--check/--no-check", help="Decode every image and mask and compare their sizes."),
):
    """Count images, defective and pixel-labelled images per split and fold, and check every file."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from .data.inspect import inspect_dataset

    console = _console()
    with Progress(TextColumn("checking files"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("check", total=None)
        report = inspect_dataset(dataset, data_root, split, check, lambda i, n: bar.update(task, completed=i, total=n))
    t = report.total
    console.print(f"{report.dataset} at {report.root}: {t.images} images, {t.defective} defective ({t.pixel_labelled} with pixel masks), {t.good} good")
    if report.folds:
        table = Table(title=f"split {report.split}" if report.split not in (None, "all") else "parts")
        for column in ("fold", "part", "images", "defective", "pixel-labelled", "good"):
            table.add_column(column, justify="right" if column not in ("part",) else "left")
        fold_name = "class" if report.dataset == "dagm" else "fold"
        for summary in report.folds:
            label = "-" if summary.fold is None else f"{fold_name} {summary.fold}"
            for part, c in summary.parts.items():
                table.add_row(label, part, str(c.images), str(c.defective), str(c.pixel_labelled), str(c.good))
        if any(f.parts for f in report.folds):
            console.print(table)
        for summary in report.folds:
            if summary.error:
                console.print(f"{fold_name} {summary.fold}: {summary.error}", markup=False)
    if check:
        for problem in report.problems:
            console.print(f"problem: {problem}", markup=False)
        status = "all files ok" if not report.problems else f"{len(report.problems)} problem(s)"
        console.print(f"checked {report.checked} images and their masks: {status}")
    if report.problems or any(f.error for f in report.folds):
        raise typer.Exit(1)


@datasets_app.command("download")
def datasets_download(
    dataset: str = typer.Argument(..., help="ksdd or ksdd2 (the others print how to get them)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to download and extract into."),
    url: Optional[str] = typer.Option(None, "--url", help="Another address (a mirror, or file:// for a local copy)."),
    archive: Optional[Path] = typer.Option(None, "--archive", help="Use this archive already on disk instead of downloading."),
):
    """Download a dataset from its public address, verify it and extract it."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from .data.download import download_dataset

    console = _console()
    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"downloading {dataset}", total=None)
        root = download_dataset(dataset, out, url=url, archive=archive, on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"{dataset} is ready at {root}")
    console.print(f"next: defectkit datasets inspect --dataset {dataset} --data-root {root}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line (no traceback) and exit with code 2."""
    try:
        app(args=argv, prog_name="defectkit", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except DefectkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
