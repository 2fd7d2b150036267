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


def _parse_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    from .errors import ConfigError

    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input-size must look like WIDTHxHEIGHT (e.g. 256x704), got '{text}'") from None
    return width, height


def _train_with_progress(config, out: Path, resume: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .methods.segdec import fit

    console = _console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[losses]}"), console=console) as bar:
        tasks: dict[int, int] = {}

        def on_step(epoch, done, total, losses):
            if epoch not in tasks:
                tasks[epoch] = bar.add_task(f"epoch {epoch + 1}/{config.epochs}", total=total, losses="")
            text = f"loss {losses['loss']:.4f}  seg {losses['loss_seg']:.4f}  cls {losses['loss_cls']:.4f}"
            bar.update(tasks[epoch], completed=done, losses=text)

        fit(config, out, resume=resume, on_step=on_step, log=lambda m: console.print(m, markup=False))


def _print_metrics(metrics: dict, run_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"test metrics ({metrics['n_images']} images, {metrics['n_defective']} defective)")
    for column in ("AP", "AUROC", "F1", "threshold", "FP", "FN", "FP at FN=0"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{metrics['ap']:.4f}", f"{metrics['auroc']:.4f}", f"{metrics['f1']:.4f}", f"{metrics['threshold']:.4f} (logit {metrics['threshold_logit']:.2f})",
        str(metrics["fp"]), str(metrics["fn"]), str(metrics["fp_at_fn0"]),
    )
    console = _console()
    console.print(table)
    console.print(f"decision threshold {metrics['decision_threshold']:.4f} (logit {metrics['decision_threshold_logit']:.2f}) from {metrics['threshold_source']}")
    console.print(f"run folder: {run_dir} (metrics.json, predictions.csv, pr_curve.png, roc_curve.png, model.safetensors)")


@app.command()
def train(
    config_file: Optional[Path] = typer.Argument(None, help="A YAML file holding training options (same names as below, with underscores)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="ksdd, ksdd2, dagm, severstal, folder or synthetic."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the dataset."),
    split: Optional[str] = typer.Option(None, "--split", help="Official split key, e.g. 33_33 (KSDD) or 246 (KSDD2)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Fold (KSDD 0..2) or class (DAGM 1..10)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Named settings: ksdd, dagm, ksdd2, severstal (the papers') or demo. Default: the dataset's own, else demo."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Model preset: paper, small, tiny."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="WIDTHxHEIGHT, both multiples of 8."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 (gray) or 3 (RGB)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    lr: Optional[float] = typer.Option(None, "--lr", help="SGD learning rate."),
    delta: Optional[float] = typer.Option(None, "--delta", help="Weight of the classification loss."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    dilate: Optional[int] = typer.Option(None, "--dilate", help="Mask dilation kernel size."),
    weight_p: Optional[float] = typer.Option(None, "--weight-p", help="Exponent p of the distance-transform weights."),
    weight_max: Optional[float] = typer.Option(None, "--weight-max", help="MAX of the distance-transform weights."),
    dynamic_balancing: Optional[bool] = typer.Option(None, "--dynamic-balancing/--no-dynamic-balancing"),
    gradient_adjustment: Optional[bool] = typer.Option(None, "--gradient-adjustment/--no-gradient-adjustment"),
    weighted_segmentation: Optional[bool] = typer.Option(None, "--weighted-segmentation/--no-weighted-segmentation"),
    frequency_sampling: Optional[bool] = typer.Option(None, "--frequency-sampling/--no-frequency-sampling"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default) or cuda."),
    validate_every: Optional[int] = typer.Option(None, "--validate-every", help="Validate every N epochs when there is a validation split (0: never)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder to create."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder after its last finished epoch."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate on the test split after training."),
):
    """Train the supervised two-stage network (segmentation + decision, end-to-end)."""
    from .errors import ConfigError
    from .evaluate.run_eval import evaluate_run
    from .methods.segdec import PAPER_SETTINGS, paper_config
    from .runs import read_yaml

    if resume is not None:
        from .methods.segdec import read_run_config
        from .runs import require_run

        train_config = read_run_config(require_run(resume))[0]
        _train_with_progress(train_config, resume, True)
        run_dir = resume
    else:
        if out is None:
            raise ConfigError("--out RUN_DIR is required (or --resume RUN_DIR)")
        values = {}
        if config_file is not None:
            loaded = read_yaml(config_file)
            if not isinstance(loaded, dict):
                raise ConfigError(f"{config_file}: expected a mapping of training options")
            values.update(loaded)
        cli_values = dict(
            dataset=dataset, data_root=str(data_root) if data_root else None, split=split, fold=fold, preset=preset,
            input_size=_parse_size(input_size), channels=channels, epochs=epochs, learning_rate=lr, delta=delta,
            batch_size=batch_size, dilate=dilate, weight_p=weight_p, weight_max=weight_max,
            dynamic_balancing=dynamic_balancing, gradient_adjustment=gradient_adjustment,
            weighted_segmentation=weighted_segmentation, frequency_sampling=frequency_sampling, seed=seed,
            device=device, validate_every=validate_every,
        )
        values.update({k: v for k, v in cli_values.items() if v is not None})
        name = values.pop("config", None)
        name = config or name
        if name is None:
            name = values.get("dataset") if values.get("dataset") in PAPER_SETTINGS else "demo"
        train_config = paper_config(name, **values)
        _train_with_progress(train_config, out, False)
        run_dir = out
    if evaluate:
        _print_metrics(evaluate_run(run_dir, device=train_config.device), run_dir)


@app.command("eval")
def eval_command(
    run_dir: Path = typer.Argument(..., help="A run folder made by `defectkit train`."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where the dataset is now, if it moved."),
    device: str = typer.Option("cpu", "--device"),
    best: bool = typer.Option(False, "--best", help="Use best.safetensors (best validation epoch) instead of the final weights."),
):
    """Evaluate a run on its test split: metrics.json, predictions.csv, PR and ROC curves."""
    from .evaluate.run_eval import evaluate_run

    weights = "best.safetensors" if best else "model.safetensors"
    _print_metrics(evaluate_run(run_dir, data_root=data_root, device=device, weights=weights), run_dir)


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A trained run folder."),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for predictions.csv and the heatmap overlays."),
    device: str = typer.Option("cpu", "--device"),
    batch_size: int = typer.Option(8, "--batch-size"),
):
    """Score images with a trained run: predictions.csv and one heatmap overlay PNG per image."""
    import time

    import cv2
    from rich.progress import Progress

    from . import runs
    from .data.imageio import read_image
    from .data.readers.common import is_image
    from .errors import DataError
    from .infer.predictor import load, overlay

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if is_image(p))
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        raise DataError("no images found in the given inputs")
    predictor = load(run_dir, device=device)
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    started = time.perf_counter()
    console = _console()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("predicting", total=len(files))
        for start in range(0, len(files), batch_size):
            batch, arrays = [], []
            for path in files[start : start + batch_size]:
                try:
                    arrays.append(read_image(path, predictor.pre.channels))
                    batch.append(path)
                except DataError as exc:
                    skipped.append(str(exc))
            for path, array, p in zip(batch, arrays, predictor.predict_batch(arrays) if arrays else []):
                rows.append([str(path), repr(p.score), repr(p.logit), int(p.decision)])
                picture = overlay(array, p.heatmap)
                cv2.imwrite(str(out / f"{path.stem}_overlay.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            bar.advance(task, len(files[start : start + batch_size]))
    runs.write_csv(out / "predictions.csv", ["image", "score", "logit", "decision"], rows)
    elapsed = time.perf_counter() - started
    for line in skipped:
        console.print(f"skipped: {line}", markup=False)
    flagged = sum(r[3] for r in rows)
    console.print(f"{len(rows)} images, {flagged} defective at threshold {predictor.threshold:.4f}; {len(rows) / elapsed:.1f} images/s")
    console.print(f"wrote {out / 'predictions.csv'} and {len(rows)} overlays")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder to create (replaced if it holds an earlier demo)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the demo's epochs."),
    size: int = typer.Option(128, "--size", help="Image side of the synthetic data and the network input."),
):
    """The main job on a fresh machine: synthetic data -> train a small network on CPU -> evaluate."""
    import shutil

    from .data.readers.synthetic import default_root
    from .data.synthetic import generate
    from .evaluate.run_eval import evaluate_run
    from .methods.segdec import paper_config

    data_root = default_root() if size == 128 else default_root().with_name(f"synthetic-{size}")
    generate(data_root, size=(size, size))
    if (out / "config.yaml").is_file():
        shutil.rmtree(out)
    config = paper_config("demo", data_root=str(data_root), input_size=(size, size), epochs=epochs)
    _console().print(f"training the '{config.preset}' network on {data_root} for {config.epochs} epochs (CPU)")
    _train_with_progress(config, out, False)
    _print_metrics(evaluate_run(out), out)


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
