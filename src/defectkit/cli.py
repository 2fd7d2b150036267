"""The ``defectkit`` command. Thin: it parses arguments and calls the library.

Heavy modules (torch, cv2, numpy, pydantic) are imported inside the commands so that
``defectkit --help`` answers at once.
"""

from __future__ import annotations

import os
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
attention_app = typer.Typer(help="EAR's MNIST attention model: retrain it from MNIST.", no_args_is_help=True)
app.add_typer(attention_app, name="attention")


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
    check: bool = typer.Option(True, "--check/--no-check", help="Decode every image and mask, check masks, orphan masks and files missing against the split lists (the cheap checks always run)."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts and every problem as JSON (kind, files, message per problem, counts per kind)."),
):
    """Count images per split and fold and audit the data: every problem, not the first (exit 1 if any)."""
    import contextlib
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from .data.inspect import inspect_dataset

    console = _console()
    bar = contextlib.nullcontext() if as_json else Progress(TextColumn("checking files"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True)
    with bar:
        task = None if as_json else bar.add_task("check", total=None)
        report = inspect_dataset(dataset, data_root, split, check, None if as_json else (lambda i, n: bar.update(task, completed=i, total=n)))
    failed = bool(report.problems or any(f.error for f in report.folds))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
        if failed:
            raise typer.Exit(1)
        return
    t = report.total
    console.print(f"{report.dataset} at {report.root}: {t.images} images, {t.defective} defective ({t.pixel_labelled} with pixel masks), {t.good} good")
    fold_name = "class" if report.dataset == "dagm" else "fold"
    if report.folds:
        table = Table(title=f"split {report.split}" if report.split not in (None, "all") else "parts")
        for column in ("fold", "part", "images", "defective", "pixel-labelled", "good"):
            table.add_column(column, justify="right" if column not in ("part",) else "left")
        for summary in report.folds:
            label = "-" if summary.fold is None else f"{fold_name} {summary.fold}"
            for part, c in summary.parts.items():
                table.add_row(label, part, str(c.images), str(c.defective), str(c.pixel_labelled), str(c.good))
        if any(f.parts for f in report.folds):
            console.print(table)
        for summary in report.folds:
            if summary.error:
                console.print(f"{fold_name} {summary.fold}: {summary.error}", markup=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    if report.problems:
        shown_per_kind = 20  # a table of thousands of missing files helps nobody; --json lists every one
        table = Table(title="problems")
        for column in ("kind", "file", "problem"):
            table.add_column(column, overflow="fold")
        counts: dict[str, int] = {}
        for p in report.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
            if counts[p.kind] > shown_per_kind:
                continue
            first = p.files[0] if p.files else ""
            text = (p.message.removeprefix(f"{first}: ") if first else p.message).replace(f"{report.root}{os.sep}", "")
            files = [f.removeprefix(f"{report.root}{os.sep}") for f in p.files]
            table.add_row(p.kind, "\n".join(files) or "-", text)
        console.print(table)
        for kind, n in counts.items():
            if n > shown_per_kind:
                console.print(f"... and {n - shown_per_kind} more {kind} (--json lists every one)")
        console.print("problems: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    status = "all files ok" if not report.problems else f"{len(report.problems)} problem(s)"
    what = f"checked {report.checked} images and their masks" if check else "cheap checks only (--no-check)"
    console.print(f"{what}: {status}")
    if failed:
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


def _train_with_progress(config, out: Path, resume: bool, on_epoch=None) -> None:
    """Training with a bar per epoch on a terminal; in a file or pipe, one whole line per
    finished epoch instead (a bar redrawn there is cut mid-word)."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import progress
    from .methods.trainer import fit

    console = _console()
    log = lambda m: console.print(m, markup=False)  # noqa: E731
    losses_text = lambda losses: "  ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in losses.items())  # noqa: E731
    if not console.is_terminal:
        last = [time.perf_counter()]  # the previous line's time: an epoch's line counts from the one before

        def on_line(epoch, done, total, losses):
            if done == total:
                now = time.perf_counter()
                console.print(f"epoch {epoch + 1}/{config.epochs}: {done}/{total} images, {now - last[0]:.1f} s  {losses_text(losses)}".rstrip(),
                              markup=False, soft_wrap=True)
                last[0] = now

        with progress.reporting(progress.for_console(console)):
            fit(config, out, resume=resume, on_step=on_line, log=log, on_epoch=on_epoch)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[losses]}"), console=console) as bar:
        tasks: dict[int, int] = {}

        def on_step(epoch, done, total, losses):
            if epoch not in tasks:
                tasks[epoch] = bar.add_task(f"epoch {epoch + 1}/{config.epochs}", total=total, losses="")
            bar.update(tasks[epoch], completed=done, losses=losses_text(losses))

        with progress.reporting(progress.TaskReporter(bar, losses="")):
            fit(config, out, resume=resume, on_step=on_step, log=log, on_epoch=on_epoch)


def threshold_text(score: float, logit: float | None = None) -> str:
    """A threshold as the console shows it: six significant digits (a small anomaly score such
    as 6.4e-07 stays readable and can be typed back), the logit beside for methods with one."""
    return f"{score:.6g}" + ("" if logit is None else f" (logit {logit:.6g})")


def settings_block(config, named: str | None) -> list[str]:
    """Lines that say, before training, which values the run takes from where: the named
    settings (and whether they were chosen or defaulted), a YAML file, the command line; every
    other field keeps the method's default."""
    def shown(value) -> str:
        if isinstance(value, (list, tuple)):
            return ("x" if len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value) else ",").join(map(str, value))
        return str(value)

    values, groups = config.to_dict(), {}
    for key, where in config.source.items():
        if key != "method":
            groups.setdefault("the command line" if where.startswith("--") else where, []).append(key)
    named_group = next((where for where in groups if where.startswith("named settings")), None)
    if named_group is None:
        lines = ["settings:"]
    else:
        how = "chosen with --config" if named is not None else f"the default for --dataset {values.get('dataset')}; --config NAME picks others (defectkit train --help)"
        lines = [f"settings: {named_group} ({how})"]
    for where in sorted(groups, key=lambda w: (w != named_group, w == "the command line")):  # named, then files, then the command line
        lines.append(f"  from {where}: " + ", ".join(f"{k} {shown(values[k])}" for k in sorted(groups[where])))
    lines.append("  every other option: the method's default (--print-config lists them all)")
    return lines


def _print_metrics(metrics: dict, run_dir: Path) -> None:
    """What the run decides first (the counts predict and serve will give), then the rank
    metrics and the best-F1 figures, labelled as the comparison they are."""
    from rich.table import Table

    logit = "threshold_logit" in metrics  # a method with a logit: thresholds as probabilities with their logits
    console = _console()
    decision = threshold_text(metrics["decision_threshold"], metrics.get("decision_threshold_logit"))
    if "decision_fp" in metrics:
        good = metrics["n_images"] - metrics["n_defective"]
        console.print(f"decisions at the run's threshold {decision} (from {metrics['threshold_source']}), what predict and serve do: "
                      f"{metrics['decision_fp']} false positives of {good} good, {metrics['decision_fn']} missed defects of {metrics['n_defective']} defective "
                      f"(TP {metrics['decision_tp']}, TN {metrics['decision_tn']})", markup=False)
        at_decision = {"split": "test", "n_images": metrics["n_images"], "n_defective": metrics["n_defective"], "fp": metrics["decision_fp"],
                       "fn": metrics["decision_fn"], "fpr": metrics["decision_fp"] / good if good else 0.0}
        for line in extreme_threshold_warnings(at_decision, f"defectkit threshold {run_dir}"):
            console.print(f"warning: {line}", markup=False)
    else:  # metrics.json of an earlier version
        console.print(f"decision threshold {decision} from {metrics['threshold_source']}", markup=False)
    table = Table(title=f"test metrics ({metrics['n_images']} images, {metrics['n_defective']} defective); F1, FP and FN at the best-F1 threshold "
                        "chosen on these test images, for comparison only")
    for column in ("AP", "AUROC", "best F1", "best-F1 threshold", "FP at it", "FN at it", "FP at FN=0"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{metrics['ap']:.4f}", f"{metrics['auroc']:.4f}", f"{metrics['f1']:.4f}",
        threshold_text(metrics["threshold"], metrics["threshold_logit"] if logit else None),
        str(metrics["fp"]), str(metrics["fn"]), str(metrics["fp_at_fn0"]),
    )
    console.print(table)
    if "pixel_auroc" in metrics:
        width, height = metrics["pixel_size"]
        console.print(f"pixel AUROC {metrics['pixel_auroc']:.4f}  pixel AP {metrics['pixel_ap']:.4f}  AUPRO {metrics['aupro']:.4f} ({metrics['pixel_images']} images at {width}x{height})")
    elif "pixel_metrics" in metrics:
        console.print(f"pixel metrics {metrics['pixel_metrics']}")
    console.print(f"run folder: {run_dir} (metrics.json, predictions.csv, pr_curve.svg, roc_curve.svg, model.safetensors)")


# ---- train: its options are the fields of the chosen method's config (methods/*.py) ----------

TRAIN_HELP = """Train a method into a run folder (`defectkit methods` lists the methods).

Options may also come from a YAML file (CONFIG_FILE, same names with underscores); options
given here win over the file, which wins over named settings (--config). `defectkit train
--method NAME --help` lists that method's options; --print-config prints the full effective
config as YAML that `defectkit train FILE.yaml` takes back."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _metavar(info, extra: dict) -> str:
    import typing

    if extra.get("metavar"):
        return extra["metavar"]
    kinds = {int: "INTEGER", float: "NUMBER", str: "TEXT"}
    for kind in typing.get_args(info.annotation) or (info.annotation,):
        for base in typing.get_args(kind) or (kind,):
            if base in kinds:
                return kinds[base]
    return "VALUE"


def _field_options(method_cls) -> list:
    """One click option per config field a command line may set; values reach the config as
    given (strings), so the CLI and YAML share the config's coercion."""
    import click

    from .config import cli_fields

    named = {k for settings in method_cls.named_settings.values() for k in settings}
    params = []
    for name, info, extra in cli_fields(method_cls.Config):
        aliases = extra.get("cli")
        aliases = [aliases] if isinstance(aliases, str) else list(aliases) if isinstance(aliases, (list, tuple)) else []
        help_text = info.description
        if name in named:
            help_text += " [default: from the named settings, --config]"
        elif info.default is not None:
            shown = info.default
            if isinstance(shown, tuple):
                shown = ("x" if name == "input_size" else ",").join(str(int(v) if isinstance(v, bool) else v) for v in shown)
            help_text += f" [default: {shown}]"
        if info.annotation is bool:
            params.append(click.Option([f"{_flag(name)}/--no-{name.replace('_', '-')}", *aliases], default=None, help=help_text))
        else:
            params.append(click.Option([_flag(name), *aliases], default=None, type=str, metavar=_metavar(info, extra), help=help_text))
    return params


def _train_params(method_cls) -> list:
    import click

    from .methods.registry import DEFAULT_METHOD

    names = ", ".join(method_cls.named_settings)
    named = f"Named settings of --method {method_cls.name}: {names}{method_cls.named_settings_default}." if names else f"--method {method_cls.name} has no named settings."
    return [
        click.Argument(["config_file"], required=False, type=click.Path(path_type=Path)),
        click.Option(["--method", "-m"], default=None, help=f"The method (`defectkit methods` lists them); default {DEFAULT_METHOD}."),
        click.Option(["--config", "-c", "named"], default=None, help=named),
        click.Option(["--out", "-o"], default=None, type=click.Path(path_type=Path), help="Run folder to create (new or empty)."),
        click.Option(["--resume"], default=None, type=click.Path(path_type=Path), help="Continue the run in this folder after its last finished epoch (options given must not change what it learnt; more --epochs may)."),
        click.Option(["--eval/--no-eval", "evaluate"], default=True, help="Evaluate on the test split after training."),
        click.Option(["--print-config"], is_flag=True, default=False, help="Print the full effective config as YAML and exit."),
        click.Option(["--log", "trackers"], multiple=True, default=(), metavar="TRACKER",
                     help="Mirror the run to a tracker: mlflow, tensorboard (repeat or comma-separate for both); the run folder stays the truth. With it, the report is written after evaluation."),
        click.Option(["--mlflow-uri"], default=None, help="MLflow tracking URI (a server, or file:/path) [default: ./mlruns, a local file store]."),
        click.Option(["--mlflow-experiment"], default="defectkit", show_default=True, help="MLflow experiment the run goes to."),
        click.Option(["--tensorboard-dir"], default=None, type=click.Path(path_type=Path), help="TensorBoard log folder [default: RUN_DIR/tensorboard]."),
    ]


def _method_for_args(args: list[str]) -> str:
    """The method a train command line is about (for its options and --help), read before
    parsing: --method, else a YAML file's or a resumed run's method, else the default."""
    from .methods.registry import DEFAULT_METHOD, method_name_of_run

    for i, arg in enumerate(args):
        if arg in ("--method", "-m") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    for i, arg in enumerate(args):
        try:
            if arg == "--resume" and i + 1 < len(args) and (Path(args[i + 1]) / "config.yaml").is_file():
                return method_name_of_run(args[i + 1])
            if arg.endswith((".yaml", ".yml")) and Path(arg).is_file():
                from .runs import read_yaml

                loaded = read_yaml(Path(arg))
                if isinstance(loaded, dict) and isinstance(loaded.get("method"), str):
                    return loaded["method"]
        except DefectkitError:
            pass  # reported properly when the command runs
    return DEFAULT_METHOD


def _train_command():
    import click

    class TrainCommand(click.Command):
        """``train`` with the options of the method its command line names."""

        def parse_args(self, ctx, args):
            from .methods.registry import DEFAULT_METHOD, get_method, method_names

            name = _method_for_args(args)
            try:
                method_cls = get_method(name)
            except DefectkitError:
                method_cls = get_method(DEFAULT_METHOD)  # an unknown --method is reported by the callback
            self.params = _train_params(method_cls) + _field_options(method_cls)
            try:
                return super().parse_args(ctx, args)
            except click.NoSuchOption as exc:
                owners = [other for other in method_names() if other != method_cls.name
                          and any(exc.option_name in p.opts or exc.option_name in p.secondary_opts for p in _field_options(get_method(other)))]
                if owners:
                    raise click.UsageError(f"{exc.option_name} does not apply to --method {method_cls.name} (it is an option of {', '.join(owners)})", ctx) from None
                raise

    return TrainCommand("train", callback=_train, help=TRAIN_HELP)


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
def train(ctx: typer.Context):
    """Train a method into a run folder (`defectkit train --help` lists its options)."""
    import click

    try:
        code = _train_command().main(args=list(ctx.args), prog_name="defectkit train", standalone_mode=False)
    except click.exceptions.Abort:
        raise KeyboardInterrupt from None
    except click.ClickException as exc:
        exc.show()
        raise typer.Exit(exc.exit_code) from None
    if isinstance(code, int) and code:
        raise typer.Exit(code)


def _train(config_file, method, named, out, resume, evaluate, print_config, trackers, mlflow_uri, mlflow_experiment, tensorboard_dir, **fields):
    from .errors import ConfigError
    from .methods.registry import DEFAULT_METHOD, make_config
    from .methods.trainer import resume_config
    from .runs import read_yaml

    given = {k: v for k, v in fields.items() if v is not None}
    source = {k: _flag(k) for k in given}
    values: dict = {}
    if config_file is not None:
        loaded = read_yaml(config_file)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: expected a mapping of training options")
        values = dict(loaded)
        source = {**{k: str(config_file) for k in values}, **source}
    values.update(given)
    name = method or values.get("method") or DEFAULT_METHOD
    values.pop("method", None)
    named = named or values.pop("config", None)
    values.pop("config", None)
    if resume is not None:
        if named is not None:
            raise ConfigError("--config applies to new runs; a resumed run keeps its settings")
        train_config = resume_config(resume, {**values, "method": name} if method else values, source)
    else:
        train_config = make_config(name, values, named, source)
    if print_config:
        header = {"config": named} if named is not None else {}
        typer.echo(train_config.to_yaml(method=train_config.method, **header), nl=False)
        return
    if resume is None and out is None:
        raise ConfigError("--out RUN_DIR is required (or --resume RUN_DIR)")
    run_dir = resume if resume is not None else out
    if resume is None and os.environ.get("RANK", "0") == "0":
        for line in settings_block(train_config, named):
            _console().print(line, markup=False, soft_wrap=True)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone evaluates and tracks
    tracking = None
    if main_rank and (trackers or mlflow_uri or tensorboard_dir):
        from .tracking import Tracking, make_trackers

        tracking = Tracking(make_trackers(list(trackers), mlflow_uri, mlflow_experiment, tensorboard_dir), run_dir, resume is not None,
                            log=lambda m: _console().print(m, markup=False))
    try:
        _train_with_progress(train_config, run_dir, resume is not None, on_epoch=tracking)
        metrics = None
        if evaluate and main_rank:
            from .evaluate.run_eval import evaluate_run

            metrics = evaluate_run(run_dir, device=train_config.device)
            _print_metrics(metrics, run_dir)
            if tracking is not None:
                from .report import write_report

                with _console().status("writing the report for the trackers"):
                    write_report(run_dir, device=train_config.device, log=lambda m: None, overwrite=True)
    except BaseException as exc:
        if tracking is not None:
            tracking.finish(status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if tracking is not None:
        tracking.finish(metrics)
        _console().print(f"tracked with {', '.join(t.name for t in tracking.trackers) or 'none (see the warnings above)'}"
                         + "".join(f"; mlflow: {t.uri} experiment {t.experiment!r}" for t in tracking.trackers if t.name == "mlflow"), markup=False)


@app.command("methods")
def methods_list():
    """The training methods and their model presets."""
    from rich.table import Table

    from .methods.registry import method_names, get_method

    table = Table(title="methods")
    for column in ("name", "what", "trains on", "presets", "named settings"):
        table.add_column(column, overflow="fold")
    for name in method_names():
        cls = get_method(name)
        table.add_row(name, cls.summary, "good and defective images" if cls.needs_defects else "good images only",
                      ", ".join(cls.presets()), ", ".join(cls.named_settings) or "-")
    _console().print(table)


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


def _overlay_names(inputs: list[tuple[Path, Path]]) -> list[Path]:
    """One distinct overlay file (relative to --out) per (image, folder it was found under):
    the image's path under that folder with ``_overlay.png`` for its suffix; where two would
    share a name (``x.png`` and ``x.jpg``, or the same path under two inputs) the suffix is
    kept, then the input's number is put in front."""
    from collections import Counter

    rel = [path.relative_to(base) if base != path else Path(path.name) for path, base in inputs]
    candidates = [
        [r.with_name(f"{r.stem}_overlay.png") for r in rel],
        [r.with_name(f"{r.name.replace('.', '_')}_overlay.png") for r in rel],
    ]
    bases = list(dict.fromkeys(base for _, base in inputs))
    candidates.append([Path(f"input{bases.index(base) + 1}") / c for c, (_, base) in zip(candidates[1], inputs)])
    key = lambda name: name.as_posix().lower()  # noqa: E731 (case-insensitive: some file systems are)
    counts = [Counter(key(n) for n in level) for level in candidates]
    names: list[Path] = []
    taken: set[str] = set()
    for i in range(len(inputs)):
        chosen = next((level[i] for level, count in zip(candidates, counts) if count[key(level[i])] == 1 and key(level[i]) not in taken), None)
        n = 2
        while chosen is None or key(chosen) in taken:
            chosen = candidates[-1][i].with_name(f"{candidates[-1][i].stem}-{n}.png")
            n += 1
        taken.add(key(chosen))
        names.append(chosen)
    return names


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A trained run folder, or a model.onnx from defectkit export (onnxruntime, no torch)."),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for predictions.csv and the heatmap overlays (not a run folder)."),
    device: str = typer.Option("cpu", "--device"),
    batch_size: int = typer.Option(8, "--batch-size"),
    weights: str = typer.Option("model.safetensors", "--weights", help="Weights file of the run folder (e.g. best.safetensors, when evaluated with eval --best)."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write one heatmap overlay PNG per image (the slowest part on big images)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace predictions.csv and overlays that an earlier predict wrote in --out."),
    include_masks: bool = typer.Option(False, "--include-masks", help="Also score files in the given folders that look like masks (under masks/ or ground_truth/, named <stem>_mask/_label/_GT beside <stem>, or two-valued beside a same-stem image); they are skipped by default, and counted."),
):
    """Score images with a trained run: predictions.csv (written as it goes) and heatmap overlays.

    Streams: the next batch is read while this one is scored, and rows reach predictions.csv
    batch by batch, so memory stays bounded and an interrupted run keeps what it scored.
    Overlays mirror the inputs' folders. An image that cannot be read gets a row with its
    error and no decision, and the command then exits with code 2: no part goes unchecked
    without a word.

    Under ``torchrun --nproc_per_node N -m defectkit predict ...`` each rank scores every N-th
    image (gloo on CPUs, one CUDA GPU per rank with nccl) into predictions.rankR.csv, and rank
    0 then merges them into one predictions.csv, in the order one process writes it."""
    import csv
    import os
    import time
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    from rich.progress import Progress

    from . import load, runs
    from .data.imageio import read_image
    from .data.readers.common import is_image
    from .data.readers.folder import mask_like
    from .errors import ConfigError, DataError, DefectkitError
    from .files import refuse_existing
    from .infer.predictor import overlay

    world = int(os.environ.get("WORLD_SIZE", "1"))
    ctx = None
    if world > 1:
        from .methods import distributed

        ctx = distributed.context(device)
        device = distributed.device_name(ctx, device)
    rank = ctx.rank if ctx else 0
    parts = [out / f"predictions.rank{r}.csv" for r in range(world)] if ctx else []
    problem = None
    try:  # every rank checks the same things; under torchrun they agree before any writes
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        found: dict[Path, tuple[Path, Path]] = {}  # resolved path -> (path, the input folder it was found under)
        target = out.resolve()
        masks: dict[Path, str] = {}  # skipped: mask-looking files of the given folders, and why
        for item in inputs:
            if item.is_dir():  # never this command's own output (overlays of an earlier run) as input
                listed = sorted(p for p in item.rglob("*") if is_image(p) and not p.resolve().is_relative_to(target))
                if not include_masks:
                    skipped = mask_like(listed, item)
                    masks.update(skipped)
                    listed = [p for p in listed if p not in skipped]
                pairs = [(p, item) for p in listed]
            elif item.is_file():
                pairs = [(item, item)]
            else:
                raise DataError(f"{item}: no such file or folder")
            for path, base in pairs:
                found.setdefault(path.resolve(), (path, base))  # an image given twice is scored once
        masks = {p: why for p, why in masks.items() if p.resolve() not in found}  # one also named as a file is scored
        if not found:
            raise DataError("no images found in the given inputs" + (f" (besides {len(masks)} files that look like masks; --include-masks scores them)" if masks else ""))
        if out.exists() and not out.is_dir():
            raise DataError(f"{out}: is a file; --out must be a folder")
        if (out / runs.CONFIG).is_file():
            raise DataError(f"{out}: is a run folder (its predictions.csv is the evaluation's); choose another --out")
        pairs = list(found.values())
        every = [path for path, _ in pairs]
        names = _overlay_names(pairs) if overlays else []
        refuse_existing([out / "predictions.csv", *parts, *(out / n for n in names)], overwrite)
        if run_dir.suffix == ".onnx" and ctx and os.environ.get("OMP_NUM_THREADS"):  # torchrun's share of the cores per rank
            from .infer.onnx_predictor import OnnxPredictor

            predictor = OnnxPredictor(run_dir, threads=int(os.environ["OMP_NUM_THREADS"]))
        else:
            predictor = load(run_dir, device=device, weights=weights) if run_dir.suffix != ".onnx" else load(run_dir, device=device)
    except DefectkitError as exc:
        if not ctx:
            raise
        problem = exc
    if ctx:
        distributed.agree(ctx, problem)
        distributed.barrier(ctx)  # no rank writes before every rank has checked that nothing is overwritten
    out.mkdir(parents=True, exist_ok=True)
    overlay_of = dict(zip(every, names))
    if masks and rank == 0:
        example, why = next(iter(masks.items()))
        _console().print(f"skipping {len(masks)} file(s) that look like masks, not parts (e.g. {example}: {why}); --include-masks scores them too", markup=False)
    files = ctx.shard(every) if ctx else every
    rows_file = parts[rank] if ctx else out / "predictions.csv"

    def read_batch(paths):
        batch, failed = [], []
        for path in paths:
            try:
                batch.append((path, read_image(path, predictor.channels)))
            except DataError as exc:
                failed.append((path, str(exc)))
        return batch, failed

    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    scored, flagged, skipped = 0, 0, []
    started = time.perf_counter()
    console = _console()
    header = ["image", "score", "logit", "decision", "overlay", "error"]
    with open(rows_file, "w", newline="") as handle, ThreadPoolExecutor(1) as reader, Progress(console=console, transient=True, disable=rank != 0) as bar:
        writer = csv.writer(handle)
        writer.writerow(header)
        task = bar.add_task("predicting" + (f" (rank 0's {len(files)} of {len(every)} images)" if ctx else ""), total=len(files))
        pending = reader.submit(read_batch, batches[0]) if batches else None
        for index, paths in enumerate(batches):
            batch, bad = pending.result()
            if index + 1 < len(batches):
                pending = reader.submit(read_batch, batches[index + 1])
            predictions = predictor.predict_batch([array for _, array in batch]) if batch else []
            for (path, array), p in zip(batch, predictions):
                name = overlay_of.get(path)
                if name is not None:
                    picture = overlay(array, p.heatmap, scale=predictor.heatmap_scale)
                    (out / name).parent.mkdir(parents=True, exist_ok=True)
                    if not cv2.imwrite(str(out / name), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
                        raise DataError(f"{out / name}: cannot write the overlay")
                writer.writerow([str(path), repr(p.score), "" if p.logit is None else repr(p.logit), int(p.decision), "" if name is None else name.as_posix(), ""])
            for path, message in bad:
                writer.writerow([str(path), "", "", "", "", message])
            handle.flush()
            skipped += [message for _, message in bad]
            scored += len(batch)
            flagged += sum(p.decision for p in predictions)
            bar.advance(task, len(paths))
    if ctx:
        totals = distributed.gather_objects(ctx, (scored, flagged, skipped))  # also: every rank has closed its part
        scored, flagged = sum(t[0] for t in totals), sum(t[1] for t in totals)
        skipped = [message for t in totals for message in t[2]]
        if ctx.main:
            _merge_predictions(parts, every, out / "predictions.csv", header)
        distributed.barrier(ctx)
    elapsed = time.perf_counter() - started
    if rank == 0:
        console.print(f"{scored} images, {flagged} defective at threshold {threshold_text(predictor.threshold)}; {scored / elapsed:.1f} images/s"
                      + (f" over {world} processes" if ctx else ""))
        console.print(f"wrote {out / 'predictions.csv'}" + (f" and {scored} overlays" if overlays else ""), markup=False)
    if skipped:  # one line per image left without a decision
        for line in skipped if rank == 0 else []:
            print(f"error: {line}; no decision (its row in predictions.csv says so)", file=sys.stderr)
        raise typer.Exit(2)


def _merge_predictions(parts: list[Path], order: list[Path], out: Path, header: list[str]) -> None:
    """One predictions.csv from the ranks' parts, rows in ``order`` (the inputs' order); the
    parts are removed once it is written whole."""
    import csv

    from .errors import DataError

    rows = {}
    for part in parts:
        with open(part, newline="") as handle:
            reader = csv.reader(handle)
            if next(reader, None) != header:
                raise DataError(f"{part}: not a predictions part this command wrote")
            rows.update((row[0], row) for row in reader)
    missing = [p for p in order if str(p) not in rows]
    if missing:
        raise DataError(f"{parts[0].parent}: the ranks' parts lack {len(missing)} of {len(order)} images (first {missing[0]}); kept the parts")
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows[str(p)] for p in order)
    tmp.replace(out)
    for part in parts:
        part.unlink()


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A trained run folder."),
    format: str = typer.Option("onnx", "--format", help="onnx (the only format so far)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Model file to write (default RUN_DIR/model.onnx, RUN_DIR/model.int8.onnx with --int8); the sidecar goes beside it as FILE.json."),
    weights: str = typer.Option("model.safetensors", "--weights", help="Weights file in the run folder (e.g. best.safetensors)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime with PyTorch on test images; refuse to write on a mismatch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the model file and sidecar an earlier export wrote."),
    int8: bool = typer.Option(False, "--int8", help="Statically quantise the model (int8 weights, uint8 activations) for CPU inference; written only when its AP and AUROC on the run's test split stay within 0.005 of the fp32 model's."),
    calibration_images: Optional[int] = typer.Option(None, "--calibration-images", help="Training images of the run that calibrate the int8 activation ranges (with --int8; default 64)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where the run's dataset is now, if it moved (with --int8: calibration and the accuracy check read it)."),
):
    """Export a run as one ONNX model taking uint8 pixels of any size: resize, scaling, score and heatmap inside."""
    from .errors import ConfigError
    from .infer.export import export_onnx
    from .infer.quantize import CALIBRATION_IMAGES

    if format != "onnx":
        raise ConfigError(f"unknown export format {format!r}; available: onnx")
    if not int8 and (calibration_images is not None or data_root is not None):
        raise ConfigError("--calibration-images and --data-root apply to --int8 exports only")
    import contextlib

    console = _console()
    if int8:  # its calibration and check show their own progress
        console.print("exporting (tracing the model takes a while), then quantising to int8", markup=False)
    with contextlib.nullcontext() if int8 else console.status("exporting (tracing the model takes a while)"):
        export_onnx(run_dir, out, weights=weights, check=check, log=lambda m: console.print(m, markup=False), overwrite=overwrite,
                    int8=int8, calibration_images=CALIBRATION_IMAGES if calibration_images is None else calibration_images, data_root=data_root)


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="An evaluated run folder, or a folder of per-fold runs (fold0/, fold1/, ...)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default RUN_DIR/report.html)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where the dataset is now, if it moved (for the gallery's images and masks)."),
    gallery: int = typer.Option(6, "--gallery", help="Images per gallery group (worst false positives, worst false negatives, true detections); 0: none."),
    device: str = typer.Option("cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the HTML file an earlier report wrote."),
):
    """One self-contained HTML report: config, data, metrics, curves, histograms, confusion counts, gallery, training curves."""
    from .report import write_report

    console = _console()
    with console.status("writing the report (scoring the gallery images)"):
        path = write_report(run_dir, out, data_root=data_root, device=device, gallery_size=gallery, log=lambda m: None, overwrite=overwrite)
    console.print(f"report: {path} (open it in a browser; it needs no network)", markup=False)


@app.command("serve")
def serve_command(
    model: Path = typer.Argument(..., help="A trained run folder (PyTorch), or a model.onnx from defectkit export (onnxruntime)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; the service has no authentication)."),
    port: int = typer.Option(8000, "--port", help="TCP port, 1-65535; one already in use is an error before the model loads."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (run folders only)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest request body accepted (413 beyond)."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", help="Largest image accepted, in pixels, read from its header before decoding (413 beyond)."),
    max_pixels_in_flight: Optional[int] = typer.Option(None, "--max-pixels-in-flight", help="Decoded pixels all requests together may hold at once; this bounds memory, as a small upload can decode to a huge picture. Requests beyond it wait, then get 503 busy with Retry-After. Default: 4 x --max-pixels."),
    body_timeout_s: float = typer.Option(30.0, "--body-timeout-s", help="Seconds a request's whole body may take to arrive; a stalled upload gets 408 and its connection closed."),
    queue_timeout_s: float = typer.Option(10.0, "--queue-timeout-s", help="Seconds a request waits for room in the pixel budget before 503 busy."),
    max_batch: int = typer.Option(8, "--max-batch", help="Images scored together when requests arrive at once."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", help="How long a batch waits for more images."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Compute threads of the model (default: one per core)."),
    weights: str = typer.Option("model.safetensors", "--weights", help="Weights file of the run folder (e.g. best.safetensors, when evaluated with eval --best)."),
):
    """HTTP inference service: POST /predict, GET /health (503 once the model gives a NaN score), GET /model, API docs at /docs, a web page at /."""
    from .serve import serve

    def announce():  # once the options, the port and the model have passed: a bad one is one error line only
        _console(stderr=True).print(f"serving {model} on http://{host}:{port}/ (docs: /docs; Ctrl-C stops)", markup=False)

    serve(model, host=host, port=port, device=device, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
          max_batch=max_batch, batch_wait_ms=batch_wait_ms, threads=threads, max_pixels_in_flight=max_pixels_in_flight,
          body_timeout_s=body_timeout_s, queue_timeout_s=queue_timeout_s, announce=announce, weights=weights)


@app.command("threshold")
def threshold_command(
    run_dir: Path = typer.Argument(..., help="A trained (and, for --split test, evaluated) run folder."),
    policy: str = typer.Option("best-f1", "--policy", "-p", help="best-f1, zero-fn (miss no defect), max-fpr=X (flag at most a share X of good parts) or recall=X."),
    split: str = typer.Option("auto", "--split", help="validation, test, or auto: validation when it suits the policy, else test (with a warning)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where the dataset is now, if it moved (to score the validation split)."),
    device: str = typer.Option("cpu", "--device"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what the policy gives without storing it."),
    weights: str = typer.Option("model.safetensors", "--weights", help="Weights file the threshold is for (e.g. best.safetensors); predict, export and serve use it with these weights only."),
):
    """Set the run's production decision threshold by a policy; predict, export and serve then use it."""
    from rich.table import Table

    from .evaluate.run_eval import set_threshold, store_threshold

    console = _console()
    result = set_threshold(run_dir, policy, split=split, data_root=data_root, device=device, write=False,
                           log=lambda m: _console(stderr=True).print(m, markup=False), weights=weights)
    table = Table(title=f"{policy} on the {result['split']} split ({result['n_images']} images, {result['n_defective']} defective)")
    for column in ("threshold", "TP", "FP", "FN", "TN", "recall", "false-positive rate", "precision"):
        table.add_column(column, justify="right")
    table.add_row(threshold_text(result["score"], result["value"] if result["score"] != result["value"] else None), *(str(result[k]) for k in ("tp", "fp", "fn", "tn")),
                  *(f"{result[k]:.4f}" for k in ("recall", "fpr", "precision")))
    console.print(table)
    for line in extreme_threshold_warnings(result):
        console.print(f"warning: {line}", markup=False)
    if dry_run:
        console.print("dry run: nothing stored")
    else:
        store_threshold(run_dir, result, weights)
        console.print(f"stored in {run_dir / 'threshold.json'}; predict and serve use it now (re-export ONNX models to carry it)", markup=False)


EXTREME_FPR, EXTREME_MISS = 0.2, 0.2  # shares of good parts flagged / of defects missed that a user must hear about


def extreme_threshold_warnings(result: dict, command: str | None = None) -> list[str]:
    """Plain words for a threshold a line would regret: most good parts flagged, or many
    defects let through, with the policy that bounds it instead (as an option of the
    ``threshold`` command, or as the whole ``command`` to run)."""
    def policy(text: str) -> str:
        return f"--policy {text}" if command is None else f"`{command} --policy {text}`"

    lines = []
    good = result["n_images"] - result["n_defective"]
    if good and result["fpr"] > EXTREME_FPR:
        lines.append(f"this threshold flags {result['fpr']:.1%} of the good parts of the {result['split']} split ({result['fp']} of {good}) as defective; "
                     f"to bound that share, use {policy('max-fpr=0.05')} (at most 5%), and look at how many defects it then misses")
    if result["n_defective"] and result["fn"] / result["n_defective"] > EXTREME_MISS:
        lines.append(f"this threshold misses {result['fn'] / result['n_defective']:.1%} of the defective parts of the {result['split']} split "
                     f"({result['fn']} of {result['n_defective']}): they would be passed as good; to catch more, use {policy('recall=0.99')} or zero-fn")
    return lines


def _demo_folder(out: Optional[Path], overwrite: bool) -> Path:
    """The demo's run folder: a free one by default; a given one that is taken only with
    ``overwrite``, and only when it holds a run's files alone (nothing else is deleted)."""
    import shutil

    from . import runs
    from .errors import DataError
    from .methods.trainer import LOCK_FILE

    if out is None:
        out, n = Path("runs/demo"), 2
        while out.exists() and (not out.is_dir() or any(out.iterdir())):
            out, n = Path(f"runs/demo-{n}"), n + 1
        return out
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return out
    if not out.is_dir():
        raise DataError(f"{out}: is a file; --out must be a folder")
    if not overwrite:
        raise DataError(f"{out}: already holds files; pass --overwrite to replace an earlier run there, or choose another --out")
    known = {runs.CONFIG, runs.MODEL, runs.BEST, runs.CHECKPOINT, runs.TRAIN_LOG, runs.METRICS, runs.PREDICTIONS,
             runs.PR_CURVE, runs.ROC_CURVE, runs.THRESHOLD, LOCK_FILE, "report.html", "model.onnx", "model.onnx.json",
             "model.int8.onnx", "model.int8.onnx.json"}
    others = sorted(p.name for p in out.iterdir() if p.name not in known)
    if not (out / runs.CONFIG).is_file() or others:
        raise DataError(f"{out}: is not only a run folder (holds {', '.join(others[:3]) or 'no config.yaml'}); --overwrite replaces run folders only; choose another --out")
    shutil.rmtree(out)
    return out


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder to create [default: runs/demo, or runs/demo-2, ... when taken]."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the demo's epochs."),
    size: int = typer.Option(128, "--size", help="Image side of the synthetic data and the network input."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run folder --out names when it holds an earlier run (and nothing else)."),
):
    """The main job on a fresh machine: synthetic data -> train a small network on CPU -> evaluate -> HTML report."""
    from .data.readers.synthetic import default_root
    from .data.synthetic import DEMO_COUNTS, generate
    from .evaluate.run_eval import evaluate_run
    from .methods.registry import DEFAULT_METHOD, get_method

    out = _demo_folder(out, overwrite)
    data_root = default_root().with_name(f"synthetic-demo3-{size}")  # demo3: DEMO_COUNTS' 400 + 400 training images
    _console().print(f"generating the synthetic demo data in {data_root} (reused when already there)")
    generate(data_root, size=(size, size), **DEMO_COUNTS)
    method = get_method(DEFAULT_METHOD)
    values = dict(method.demo or {})
    named = values.pop("config", None)
    values.update(data_root=str(data_root), input_size=(size, size), **({"epochs": epochs} if epochs is not None else {}))
    config = method.make_config(values, named)
    _console().print(f"training the '{config.preset}' {method.name} network on {data_root} for {config.epochs} epochs (CPU)")
    _train_with_progress(config, out, False)
    _print_metrics(evaluate_run(out), out)
    from .report import write_report

    report = write_report(out, log=lambda m: None)
    _console().print(f"report: {report} (open it in a browser); next: defectkit serve {out}", markup=False)


@attention_app.command("pretrain")
def attention_pretrain(
    mnist: Path = typer.Option(..., "--mnist", help="MNIST as a CSV (.csv/.csv.gz, label last), a folder of idx files, or an *-images-idx3-ubyte file."),
    out: Path = typer.Option(..., "--out", "-o", help="Weights file to write (NAME.safetensors; NAME.json is written beside it)."),
    epochs: int = typer.Option(12, "--epochs", help="12 for the shipped weights (3 min on one CPU thread)."),
    batch_size: int = typer.Option(32, "--batch-size", help="32 in the paper."),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate (1e-4 in the paper)."),
    holdout: int = typer.Option(1000, "--holdout", help="Digits held out for the test accuracy (not used when a folder holds the t10k test files)."),
    label_column: str = typer.Option("last", "--label-column", help="CSV only: 'last' or 'first'."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
):
    """Train the MNIST spatial-attention classifier whose attention EAR excises (Adam, cross-entropy)."""
    import time

    import numpy as np
    import torch

    from .data.mnist import read_mnist
    from .methods.accel import resolve
    from .methods.attention_pretrain import accuracy, holdout_split, pretrain, save_attention

    console = _console()
    data = read_mnist(mnist, "train", label_column=label_column)
    if mnist.is_dir() and any(mnist.glob("t10k-*")):
        train_images, train_labels = data
        test_images, test_labels = read_mnist(mnist, "test")
        test_note = f"the {len(test_images)} digits of the t10k test files"
    else:
        train_idx, test_idx = holdout_split(len(data.images), holdout, seed)
        train_images, train_labels = data.images[train_idx], data.labels[train_idx]
        test_images, test_labels = data.images[test_idx], data.labels[test_idx]
        test_note = f"{len(test_images)} held-out digits (seed {seed})"
    dev = resolve(device, "fp32").device
    console.print(f"training on {len(train_images)} digits from {mnist}; testing on {test_note}", markup=False)
    started = time.perf_counter()

    def on_epoch(epoch, loss, seconds):
        console.print(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f} ({seconds:.1f} s)")

    model = pretrain(train_images, train_labels, epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed, device=dev, on_epoch=on_epoch)
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, test_images, test_labels, dev)
    train_accuracy = accuracy(model, train_images, train_labels, dev)
    training = {
        "data": mnist.name, "n_train": int(len(train_images)), "test": test_note, "n_test": int(len(test_images)),
        "test_accuracy": round(test_accuracy, 6), "train_accuracy": round(train_accuracy, 6), "epochs": epochs,
        "batch_size": batch_size, "learning_rate": lr, "optimizer": "Adam", "loss": "cross-entropy", "seed": seed,
        "seconds": round(seconds, 1), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "class_counts": np.bincount(train_labels, minlength=10).tolist(),
    }
    save_attention(model.cpu(), out, training)
    console.print(f"test accuracy {test_accuracy:.4f} on {test_note} (train {train_accuracy:.4f}); {seconds / 60:.1f} min", markup=False)
    console.print(f"wrote {out} and {out.with_suffix('.json')}", markup=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line (no traceback) and exit with code 2."""
    from . import progress

    try:
        with progress.reporting(progress.for_console(_console())):
            app(args=argv, prog_name="defectkit", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except DefectkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and not _out_of_memory(str(exc)):
            raise
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        print(f"error: out of memory ({first[:200]}); use a smaller --input-size or --batch-size", file=sys.stderr)
        return 2
    return 0


def _out_of_memory(message: str) -> bool:
    """Whether a RuntimeError is PyTorch failing to allocate (CPU or CUDA)."""
    return any(text in message for text in ("can't allocate memory", "out of memory", "CUDA out of memory", "not enough memory"))


if __name__ == "__main__":
    sys.exit(main())
