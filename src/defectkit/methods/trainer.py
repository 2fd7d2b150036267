"""The one training loop every method runs in.

* **The run folder** is claimed exclusively: a lock held for the whole training (released by
  the kernel when the process dies, even by ``kill -9``), so of two trainings into one
  ``--out`` exactly one runs and the other is refused. A folder holding other files is
  refused; one whose run stopped before its first checkpoint is started again from scratch
  (nothing to delete by hand); one with a checkpoint needs ``--resume``.
* **Order of writing**: config.yaml first (with what the method copied into the folder),
  then after every epoch ``best.safetensors`` (when validation improved), the checkpoint and
  train_log.csv, each atomically; model.safetensors and threshold.json at the end.
* **The checkpoint** holds the weights, the optimiser's state, torch's random state and the
  trainer's state with every logged epoch, in one file: weights, log and epoch never
  disagree. Epoch orders and random draws are pure functions of (seed, epoch), so a resumed
  run ends with exactly the weights of an uninterrupted one.
* **Divergence** (a non-finite loss) stops training before that epoch is checkpointed.
* **Validation**: every ``validate_every`` epochs (and after the last), when the validation
  split has good and defective images: AP, and the best epoch's weights as best.safetensors.
* **torchrun**: for methods that train data-parallel (``Method.distributed``) each process
  takes every N-th image of each global batch and the loss is multiplied by N (DDP averages
  gradients, the batch loss is a sum); rank 0 claims and writes the run folder
  (``distributed.py``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from .. import runs
from ..errors import ConfigError, DataError

LOCK_FILE = ".defectkit.lock"


def _quiet(_message: str) -> None:
    pass


class RunLock:
    """An exclusive, non-blocking lock on a run folder (``fcntl.flock`` on a lock file in it)."""

    def __init__(self, run_dir: Path, log: Callable[[str], None] = _quiet):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.log = log

    def __enter__(self) -> "RunLock":
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
            os.close(self.fd)
            self.fd = None
            raise ConfigError(f"{self.path.parent}: another training is writing to this run folder{f' (process {holder})' if holder else ''}; wait for it to end or choose another --out") from None
        except OSError as exc:  # a file system without locks (some network mounts): train, but say so
            self.log(f"warning: cannot lock {self.path} ({exc.strerror}); a second training into this folder would not be refused")
            return self
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *_exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def is_resumable(config_cls, name: str) -> bool:
    info = config_cls.model_fields.get(name)
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    return bool(extra.get("resumable"))


def resume_config(run_dir: str | Path, changes: dict[str, Any] | None = None, source: dict[str, str] | None = None):
    """The config to continue run ``run_dir`` with: its own, with ``changes`` applied where they
    cannot alter what was learnt so far (more epochs, another device, workers); any other change
    is refused, naming it."""
    from .registry import method_of_run

    run_dir = runs.require_run(Path(run_dir))
    cls = method_of_run(run_dir)
    config, _ = cls.read_config(run_dir)
    changes = dict(changes or {})
    if changes.pop("method", config.method) != config.method:
        raise ConfigError(f"{run_dir}: the run trains --method {config.method}; --resume cannot change it")
    new = cls.Config.from_dict({**config.to_dict(), **changes}, source) if changes else config
    check_resumable(run_dir, config, new)
    return new


def check_resumable(run_dir: Path, recorded, given) -> None:
    """Refuse, naming them, the changes between a run's config and the one to resume it with
    that would change what was learnt so far."""
    old, new = recorded.to_dict(), given.to_dict()
    fixed = [k for k in new if new[k] != old.get(k) and not is_resumable(type(given), k)]
    if fixed:
        shown = ", ".join(f"{k} (the run has {old.get(k)!r}, given {new[k]!r})" for k in fixed)
        raise ConfigError(f"{run_dir}: --resume cannot change {shown}: it would change what was learnt so far; start a new run with another --out")


def save_checkpoint(path: Path, model, optimizer, state: dict) -> None:
    """Weights, optimiser state and torch's random state in one atomically written file."""
    import torch

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        for index, values in optimizer.state_dict()["state"].items():
            for name, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{index}.{name}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    runs.save_weights(path, tensors, {"state": json.dumps(state)})


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """The trainer state of a checkpoint, its weights and optimiser state loaded. Checkpoints of
    runs made before the common trainer (weights only, no prefix) load too."""
    import torch
    from safetensors.torch import load_file

    state = json.loads(runs.read_metadata(path).get("state", "{}"))
    if "epoch" not in state:
        raise DataError(f"{path}: holds no training state; cannot resume")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise DataError(f"cannot read checkpoint {path}: {exc}") from None
    prefixed = any(k.startswith("model.") for k in tensors)
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")} if prefixed else tensors
    expected = model.state_dict()
    if set(weights) != set(expected) or any(weights[k].shape != v.shape for k, v in expected.items()):
        raise DataError(f"checkpoint {path} does not match the run's model config")
    runs.check_finite(tensors, path)
    model.load_state_dict(weights)
    if optimizer is not None:
        restored: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                restored.setdefault(int(index), {})[name] = value
        saved = optimizer.state_dict()
        saved["state"] = restored
        try:
            optimizer.load_state_dict(saved)
        except (ConfigError, KeyError, ValueError, RuntimeError) as exc:
            raise DataError(f"checkpoint {path}: its optimiser state does not fit the run's optimiser ({exc})") from None
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return state


def fit(config, out: str | Path, resume: bool = False, on_step: Callable[[int, int, int, dict], None] | None = None,
        log: Callable[[str], None] = print, on_epoch: Callable[[dict], None] | None = None) -> Path:
    """Train ``config`` into run folder ``out``; with ``resume`` continue it after its last
    finished epoch (``config`` then comes from :func:`resume_config`). ``on_epoch`` gets each
    epoch's train_log.csv row once it is saved (rank 0 only; :mod:`defectkit.tracking`)."""
    return Trainer(config, out, resume=resume, on_step=on_step, log=log, on_epoch=on_epoch).fit()


class Trainer:
    def __init__(self, config, out: str | Path, resume: bool = False, on_step=None, log: Callable[[str], None] = print, on_epoch=None):
        from .registry import get_method

        self.config, self.out, self.resume = config, Path(out), resume
        self.cls = get_method(config.method)
        self.on_step, self.log, self.on_epoch = on_step, log, on_epoch

    # ------------------------------------------------------------------ the run folder

    def _claim(self) -> str:
        """How this training starts: ``new``, ``restart`` (a run that stopped before its first
        checkpoint) or ``resume``. Called with the lock held."""
        out = self.out
        has_run = (out / runs.CHECKPOINT).is_file() or (out / runs.MODEL).is_file()
        if self.resume:
            if not (out / runs.CONFIG).is_file():
                raise DataError(f"{out}: run folder is missing {runs.CONFIG}")
            if not (out / runs.CHECKPOINT).is_file():
                self.log(f"{out}: the run stopped before its first checkpoint; starting it again")
                return "restart"
            return "resume"
        if (out / runs.CONFIG).is_file():
            if has_run:
                raise ConfigError(f"{out}: already holds a run; pass --resume {out} to continue it or choose another --out")
            self.log(f"{out}: the run there stopped before its first checkpoint; starting again with these options")
            return "restart"
        others = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
        if others:
            raise ConfigError(f"{out}: holds other files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); choose a new or empty folder for the run")
        return "new"

    def fit(self) -> Path:
        import contextlib

        import torch

        from ..data.audit import check_training_data
        from ..data.partition import read_parts
        from . import distributed

        config, out = self.config, self.out
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.cls.distributed:
            raise ConfigError(f"--method {self.cls.name} trains in one process; data-parallel training (torchrun) is for methods that support it")
        ctx = distributed.context(config.device)
        if not ctx.main:
            self.on_step, self.log, self.on_epoch = None, _quiet, None
        if out.exists() and not out.is_dir():
            raise DataError(f"{out}: exists and is not a folder")
        if self.resume and not out.is_dir():
            raise DataError(f"{out}: run folder not found")
        # everything that can be checked before the folder is touched: device, data, the method's needs
        method = self.cls(config, distributed.device_name(ctx, config.device), training=True)
        parts = read_parts(config)
        samples = method.training_samples(parts, self.log)
        check_training_data(parts, config.dataset, self.cls.needs_defects)  # the data audit's cheap part: what would make the result wrong
        torch.manual_seed(config.seed)
        method.model = method.acc.prepare(method.build_model())
        if ctx.main:
            out.mkdir(parents=True, exist_ok=True)
        with RunLock(out, self.log) if ctx.main else contextlib.nullcontext():
            start, error = None, None
            if ctx.main:
                try:
                    start = self._claim()
                except Exception as exc:
                    error = exc
            start, message = distributed.broadcast(ctx, (start, None if error is None else str(error)))
            if error is not None:
                raise error
            if message is not None:
                raise DataError(message)
            return self._train(ctx, start, method, parts, samples)

    # ------------------------------------------------------------------ training

    def _train(self, ctx, start: str, method, parts: dict, samples: list) -> Path:
        from ..data.loader import StreamLoader
        from ..evaluate.metrics import average_precision
        from . import distributed

        config, out, log = self.config, self.out, self.log
        validation = parts.get("validation") or []
        val_labels = [s.is_defective for s in validation]
        validating = bool(config.validate_every) and any(val_labels) and not all(val_labels)
        method.prepare_training(samples, log)
        optimizer = method.optimizer()
        recorded, saved = self.cls.read_config(out) if start == "resume" else (None, None)
        extra = method.setup(out, saved)
        if start == "resume":
            state = load_checkpoint(out / runs.CHECKPOINT, method.model, optimizer)
            if "log" not in state:  # a checkpoint written before the log travelled in it
                state["log"] = [r for r in runs.read_csv(out / runs.TRAIN_LOG) if int(r["epoch"]) <= state["epoch"]] if (out / runs.TRAIN_LOG).is_file() else []
            if config.epochs < state["epoch"] + 1:
                raise ConfigError(f"{out}: the run has finished {state['epoch'] + 1} epochs already; --epochs must be at least that")
            check_resumable(out, recorded, config)
            if ctx.main and recorded != config:
                from .base import CONFIG_VERSION

                changed = {k: v for k, v in config.to_dict().items() if recorded.to_dict().get(k) != v}
                log("resuming with " + ", ".join(f"{k} {v}" for k, v in changed.items()))
                runs.write_yaml(out / runs.CONFIG, {**saved, "version": CONFIG_VERSION, "train": config.to_dict()})
        else:
            state = {"epoch": -1, "best_val_ap": None, "best_epoch": None, "log": []}
            if ctx.main:
                from .base import CONFIG_VERSION

                runs.write_yaml(out / runs.CONFIG, {"version": CONFIG_VERSION, "method": config.method, "train": config.to_dict(), "model": method.model_section(), **extra})
                runs.write_csv(out / runs.TRAIN_LOG, self.log_fields(), [])
                if start == "restart":  # the stopped run's best epoch (saved just before it died), if any
                    (out / runs.BEST).unlink(missing_ok=True)
        distributed.barrier(ctx)
        if state["epoch"] + 1 >= config.epochs and (out / runs.MODEL).is_file():
            if ctx.main and not self._model_holds(method):
                # a resumed training stopped between its last checkpoint and writing the model:
                # model.safetensors (and the records made of it) are an earlier finish's
                log(f"{out}: {runs.MODEL} holds earlier weights than the checkpoint's {state['epoch'] + 1} epochs; writing them")
                runs.save_weights(out / runs.MODEL, method.model.state_dict())
                self._write_threshold(method, parts)
            else:
                log(f"{out}: training already finished ({config.epochs} epochs)")
                if ctx.main and not (out / runs.THRESHOLD).is_file():
                    self._write_threshold(method, parts)
            distributed.barrier(ctx)
            return out

        method.net = distributed.wrap(method.model, ctx, method.device)
        loader = StreamLoader(samples, method.item_loader(), workers=config.workers, cache_mb=config.cache_mb,
                              pin_memory=method.acc.cuda, priority=method.cache_priority())
        scores = None
        try:
            for epoch in range(state["epoch"] + 1, config.epochs):
                started = time.perf_counter()
                row = self.run_epoch(method, loader, optimizer, epoch, ctx)
                if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
                    raise DataError(f"training diverged at epoch {epoch + 1} (loss {row.get('loss')}); the checkpoint keeps the last finished epoch; lower the learning rate")
                val_ap, scores = None, None
                if validating and ((epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs):
                    method.eval()
                    scores = distributed.gather_shards(ctx, method.raw_scores(ctx.shard(validation)), len(validation))
                    val_ap = float(average_precision(val_labels, scores))
                    if state["best_val_ap"] is None or val_ap > state["best_val_ap"]:
                        state.update(best_val_ap=val_ap, best_epoch=epoch)
                        if ctx.main:
                            runs.save_weights(out / runs.BEST, method.model.state_dict())
                row.update(val_ap="" if val_ap is None else val_ap, seconds=round(time.perf_counter() - started, 3))
                state["log"].append(row)
                state["epoch"] = epoch
                if ctx.main:
                    save_checkpoint(out / runs.CHECKPOINT, method.model, optimizer, state)
                    self._write_log(state["log"])
                    if self.on_epoch is not None:
                        self.on_epoch(dict(row))
            if ctx.main:
                runs.save_weights(out / runs.MODEL, method.model.state_dict())
                # the last epoch's validation scores are the final model's
                self._write_threshold(method, parts, scores if state["epoch"] + 1 == config.epochs else None)
            distributed.barrier(ctx)  # the run folder is complete before any rank returns
        finally:
            loader.close()
        return out

    def run_epoch(self, method, loader, optimizer, epoch: int, ctx, max_steps: int | None = None) -> dict[str, Any]:
        """One epoch (at most ``max_steps`` batches: benchmarks); returns its log row."""
        from . import accel, distributed

        values = method.epoch_values(epoch)
        batches = method.epoch_batches(epoch, len(loader))
        if max_steps is not None:
            batches = batches[:max_steps]
        n = sum(len(b) for b in batches)
        totals: dict[str, float] = {}
        method.train(True)

        def to_device(stream):
            for indices, tensors in stream:
                yield indices, tuple(method.acc.tensor(t) for t in tensors)

        stream = accel.prefetch(to_device(loader.batches(ctx.shard(b) for b in batches)), enabled=method.acc.cuda)
        done = 0
        for batch, (indices, tensors) in zip(batches, stream):
            loss, logged = method.training_step(indices, tensors, epoch)
            if optimizer is not None and loss is not None:
                optimizer.zero_grad(set_to_none=True)
                (loss * ctx.world if ctx.active else loss).backward()  # DDP averages over ranks; batch losses are sums
                optimizer.step()
            for key, value in logged.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            done += len(batch)
            if self.on_step:
                # under torchrun rank 0 sees only its share of the losses: progress without them
                self.on_step(epoch, done, n, {} if ctx.active else method.epoch_log(totals, done))
        if ctx.active:
            keys = sorted(totals)
            totals = dict(zip(keys, distributed.sum_values(ctx, [totals[k] for k in keys], method.device)))
        method.end_epoch(epoch)
        return {"epoch": epoch, **method.epoch_log(totals, n), **values}

    # ------------------------------------------------------------------ files

    def _model_holds(self, method) -> bool:
        """Whether model.safetensors holds the model's weights (as loaded from the checkpoint)."""
        import torch
        from safetensors.torch import load_file

        try:
            saved = load_file(str(self.out / runs.MODEL))
        except Exception:  # unreadable (a torn or foreign file): the checkpoint's weights replace it
            return False
        current = method.model.state_dict()
        return saved.keys() == current.keys() and all(torch.equal(saved[k], v.detach().cpu()) for k, v in current.items())

    def log_fields(self) -> list[str]:
        return ["epoch", *self.cls.log_fields, "val_ap", "seconds"]

    def _write_log(self, rows: list[dict]) -> None:
        fields = self.log_fields()
        runs.write_csv(self.out / runs.TRAIN_LOG, fields, ([row.get(k, "") for k in fields] for row in rows))

    def _write_threshold(self, method, parts, validation_scores=None) -> None:
        """threshold.json when the method's rule needs no test split (else evaluation sets it)."""
        method.eval()
        threshold = method.decision_threshold(parts, validation_scores=validation_scores)
        if threshold is None and (self.out / runs.THRESHOLD).is_file():  # set before this training went on
            self.log(f"warning: {self.out / runs.THRESHOLD} was set for the earlier weights; predictors refuse it until `defectkit threshold` or `defectkit eval` sets one again")
        if threshold is not None:
            runs.write_json(self.out / runs.THRESHOLD, {**threshold, **runs.weights_record(self.out)})
            raw = threshold["value"]
            shown = f"{float(method.to_score(raw)):.6g} (logit {raw:.6g})" if method.raw_is_logit else f"{raw:.6g}"
            found = threshold.get("validation")
            said = (f": on its {threshold['images']} images AP {found['ap']:.4f}, AUROC {found['auroc']:.4f}, {found['fp']} of {found['fp'] + found['tn']} good flagged, "
                    f"{found['fn']} of {found['n_defective']} defective missed") if found else ""
            self.log(f"decision threshold {shown} from {threshold['source']}{said}")
