"""The method interface: one :class:`Method` subclass per method, in its own module.

A method declares its typed config (``Config``), builds its model, supplies the training
step, what its raw score means and its heatmap (``forward``, the graph that is also exported
to ONNX), its threshold rule and its CLI options (the config's fields). Training runs in the
one trainer (``trainer.py``); evaluation, prediction, export, the report and the service use
only this interface, so none of them names a method.

Scores: ``forward`` returns the raw score (what the decision threshold applies to; higher =
more likely defective) and the heatmap. ``raw_is_logit`` methods give a logit whose sigmoid
is the user-facing score (a defect probability) and a probability map; the others' raw score
is the score itself (an anomaly score) in the units of their map.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal

import numpy as np

from .. import runs
from ..config import Config, Float, Int, Size, option
from ..data.loader import DEFAULT_CACHE_MB
from ..data.preprocess import Preprocessing
from ..data.sample import Sample
from ..errors import ConfigError, DataError

DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
CONFIG_VERSION = 2  # config.yaml written with the validation part and the typed configs


class MethodConfig(Config):
    """The options every method has; a method's config adds its own and sets its defaults."""

    label: ClassVar[str] = "training"

    method: str = option("", "The method (set by the method's config class).", cli=False)
    # data
    dataset: str = option("synthetic", "Dataset: ksdd, ksdd2, dagm, severstal, folder or synthetic.", cli=("-d",))
    data_root: str | None = option(None, "Folder holding the dataset (a CSV file for folder data also works).", resumable=True)
    split: str | None = option(None, "Official split key, e.g. 33_33 (KSDD) or 246 (KSDD2); 'all': every image on disk. Default: the dataset's protocol split.")
    fold: Int | None = option(None, "Fold (KSDD 0..2) or class (DAGM 1..10).")
    test_share: Float = option(0.3, "Share of each class tested when the data has no test split.")
    validation_share: Float | None = option(None, "Share of each class of the training images held out for validation when the data has no validation split (default: 0.2; none for the official protocols).")
    split_seed: Int | None = option(None, "Seed of those splits (default: the training seed).")
    # model and input
    preset: str = option("paper", "Model preset (paper, small, tiny).")
    model_overrides: dict[str, Any] = option({}, "Model config fields to change (YAML only).", cli=False)
    input_size: Size = option((512, 1408), "Network input size, WIDTHxHEIGHT, both multiples of 8.", metavar="WxH")
    channels: Int = option(1, "1 (gray) or 3 (RGB).")
    resize: Literal["stretch", "pad"] = option(
        "stretch", "How images reach the input size: stretch (both sides scaled to it, as the papers do) or pad (scaled alike, keeping the aspect ratio, with zeros at the right or bottom; heatmaps cropped back).")
    # optimisation
    epochs: Int = option(50, "Training epochs (--resume may raise it).", resumable=True)
    batch_size: Int = option(1, "Images per optimiser step.")
    learning_rate: Float = option(1.0, "Learning rate.", cli=("--lr",))
    seed: Int = option(0, "Seed of the initial weights, the epoch orders and the splits.")
    device: str = option("cpu", "cpu or cuda (cuda:N for one GPU).", resumable=True)
    validate_every: Int = option(5, "Validate every N epochs when the validation split has good and defective images; the best epoch is kept as best.safetensors (0: never).")
    eval_batch_size: Int = option(4, "Images scored at once in validation and evaluation.", resumable=True)
    workers: Int = option(0, "Processes decoding training images ahead of the training step (0: the training process itself).", resumable=True)
    cache_mb: Float = option(DEFAULT_CACHE_MB, "Memory for decoded training images, in MB; images beyond it are decoded again each epoch (0: no cache).", resumable=True)

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be at least 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 < self.test_share < 1:
            raise ValueError(f"test_share must lie in (0, 1), got {self.test_share}")
        if self.validation_share is not None and not 0 <= self.validation_share < 1:
            raise ValueError(f"validation_share must lie in [0, 1), got {self.validation_share}")
        if self.validate_every < 0 or self.workers < 0 or self.cache_mb < 0:
            raise ValueError("validate_every, workers and cache_mb must be 0 or more")
        if not DEVICE.match(self.device):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        self.preprocessing()  # checks size and channels

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(input_size=self.input_size, channels=self.channels, dilate=0, weighted_segmentation=False, resize=self.resize)


def to_score(raw, raw_is_logit: bool):
    """User-facing score: the probability (float64 sigmoid) of a logit, else the raw score."""
    if raw_is_logit:
        return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(raw, dtype=np.float64)))
    return np.asarray(raw, dtype=np.float64)


class Method:
    """A method with its config: built new for training, or loaded from a run folder to score."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]
    model_name: ClassVar[str]  # the registered model it trains (its presets are the method's)
    needs_defects: ClassVar[bool] = False  # True: trains on good and defective images; False: good only
    raw_is_logit: ClassVar[bool] = False
    score_text: ClassVar[str] = "anomaly score"  # what the user-facing score is
    heatmap_text: ClassVar[str] = "anomaly map"  # what the heatmap shows
    distributed: ClassVar[bool] = False  # data-parallel training under torchrun
    log_fields: ClassVar[tuple[str, ...]] = ("loss",)  # train_log.csv columns from the epoch log
    named_settings: ClassVar[dict[str, dict]] = {}  # --config NAME
    named_settings_default: ClassVar[str] = ""  # which are used without --config, for --help
    demo: ClassVar[dict[str, Any] | None] = None  # what `defectkit demo` trains (the default method's)

    def __init__(self, config: MethodConfig, device: str | None = None, training: bool = False):
        self.config = config
        self.acc = self.accelerator(device or config.device, training)
        self.device = self.acc.device
        self.pre = config.preprocessing()
        self.model = None  # the network saved as model.safetensors
        self.net = None  # what training calls: the model, or its data-parallel wrapper
        self.epoch_rng = None  # the generator of the current epoch's draws (order, masks)

    # ------------------------------------------------------------------ config

    @classmethod
    def make_config(cls, values: dict[str, Any], named: str | None = None, source: dict[str, str] | None = None) -> MethodConfig:
        """The training config from option values (named settings first, when the method has them)."""
        if named is not None:
            raise ConfigError(f"--method {cls.name} has no named settings (--config {named}); set its options directly")
        return cls.Config.from_dict({**values, "method": cls.name}, source)

    @classmethod
    def presets(cls) -> list[str]:
        from ..models.registry import list_presets

        return list_presets(cls.model_name)

    def accelerator(self, device: str, training: bool):
        """Device and precision; fp32 unless a method says otherwise (``accel.py``)."""
        from . import accel

        return accel.resolve(device, "fp32")

    # ------------------------------------------------------------------ model

    def build_model(self):
        from ..models import create_model

        c = self.config
        return create_model(self.model_name, c.preset, in_channels=c.channels, **c.model_overrides)

    def model_section(self) -> dict:
        """config.yaml's ``model`` section: what :meth:`model_from_section` rebuilds the model from."""
        return {"name": self.model_name, "config": self.model.config.to_dict()}

    def model_from_section(self, section: dict):
        from ..models.registry import model_from_config

        return model_from_config(section.get("name", self.model_name), section["config"])

    def setup(self, run_dir: Path, saved: dict | None) -> dict:
        """Prepare what the method needs besides its model: ``saved`` is the run's config.yaml
        when the run exists, else None (a new run: copy what it depends on into ``run_dir``).
        Returns extra config.yaml sections."""
        return {}

    def networks(self) -> list:
        """Every torch module scoring uses (moved to the device, registered in the ONNX graph)."""
        return [self.model]

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def eval(self) -> None:
        for net in self.networks():
            net.eval()

    # ------------------------------------------------------------------ training

    def training_samples(self, parts: dict[str, list[Sample]], log: Callable[[str], None]) -> list[Sample]:
        """The images training iterates over (checked: the method's requirements)."""
        train = parts.get("train", [])
        if not train:
            raise DataError(f"dataset {self.config.dataset}: the training split is empty")
        if self.needs_defects:
            if not any(s.is_defective for s in train):
                raise DataError(f"dataset {self.config.dataset}: the training split has no defective image; --method {self.name} needs some (use a method trained on good images only)")
            return train
        good = [s for s in train if not s.is_defective]
        if len(good) < len(train):
            log(f"ignoring {len(train) - len(good)} defective training image(s): {self.name} trains on good images only")
        if not good:
            raise DataError(f"dataset {self.config.dataset}: the training split has no good image to train {self.name} on")
        return good

    def item_loader(self) -> Callable[[Sample], tuple[np.ndarray, ...]]:
        """What a training item is, as arrays decoded from a sample (picklable)."""
        return _ImageItem(self.pre)

    def prepare_training(self, samples: list[Sample], log: Callable[[str], None]) -> None:
        """Per-run training state from the training samples (labels, samplers, switches)."""

    def cache_priority(self) -> list[int] | None:
        """Training items to keep decoded first (default: in order)."""
        return None

    def epoch_order(self, epoch: int, n: int) -> np.ndarray:
        """The training items of one epoch in order, a pure function of (seed, epoch): a resumed
        run replays it. Default: a seeded permutation; its generator goes on drawing the epoch's
        random choices (``epoch_rng``)."""
        self.epoch_rng = np.random.default_rng([self.config.seed, epoch])
        return self.epoch_rng.permutation(n)

    def epoch_batches(self, epoch: int, n: int) -> list[np.ndarray]:
        """The epoch's order cut into batches of ``batch_size``."""
        order, size = self.epoch_order(epoch, n), self.config.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def optimizer(self):
        """The optimiser of ``self.model``'s parameters, or None for a method fitted without gradients."""
        return None

    def epoch_values(self, epoch: int) -> dict[str, float]:
        """Values fixed for a whole epoch (loss weights...), logged with it."""
        return {}

    def training_step(self, indices: np.ndarray, tensors: tuple, epoch: int) -> tuple[Any, dict[str, float]]:
        """(loss to back-propagate or None, values to log summed over the batch's images)."""
        raise NotImplementedError

    def epoch_log(self, totals: dict[str, float], n: int) -> dict[str, float]:
        """The logged epoch values from the summed step values over ``n`` images."""
        return {k: v / max(n, 1) for k, v in totals.items()}

    def end_epoch(self, epoch: int) -> None:
        """After an epoch's steps, before it is validated and checkpointed (a method fitted in
        one pass finishes its model here)."""

    # ------------------------------------------------------------------ scoring

    def forward(self, x):
        """(raw scores ``N``, heatmaps ``N x 1 x h x w``) of float images ``x`` (``N x C x H x W``
        in [0, 1] at the input size). Torch only: it is the graph ONNX export traces."""
        raise NotImplementedError

    def score_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raw scores float64, heatmaps float32 ``N x h x w``) of preprocessed images."""
        import torch

        with torch.inference_mode(), self.acc.autocast():
            raw, maps = self.forward(self.acc.tensor(images))
        return raw.double().cpu().numpy(), maps[:, 0].float().cpu().numpy()

    def to_score(self, raw):
        return to_score(raw, self.raw_is_logit)

    def heatmap_scale(self, threshold_raw: float) -> float:
        """The heatmap value drawn at the top of the colour scale: 1 for probability maps; else
        twice the threshold, so a pixel at the image threshold is mid-scale."""
        return 1.0 if self.raw_is_logit else max(2 * float(threshold_raw), 1e-6)

    def iter_samples(self, samples: list[Sample], batch_size: int | None = None) -> Iterator[tuple[list[Sample], np.ndarray, np.ndarray]]:
        """(samples, raw scores, maps) batch by batch: maps never pile up for a whole split."""
        from ..data.loader import stream

        from .. import progress

        load = _ImageItem(self.pre)
        batches = stream(samples, load, batch_size or self.config.eval_batch_size)
        for part, (images,) in progress.track(batches, f"scoring {len(samples)} images", total=len(samples), size=lambda batch: len(batch[0])):
            raw, maps = self.score_batch(images.numpy())
            yield part, raw, maps

    def raw_scores(self, samples: list[Sample], batch_size: int | None = None) -> np.ndarray:
        scores = [raw for _, raw, _ in self.iter_samples(samples, batch_size)]
        return np.concatenate(scores) if scores else np.empty(0, np.float64)

    def check_exportable(self) -> None:
        """Raise :class:`ConfigError` when this run's ``forward`` cannot become an ONNX graph."""

    # ------------------------------------------------------------------ decision threshold

    def calibration_threshold(self, parts: dict[str, list[Sample]]) -> dict | None:
        """A threshold from good images alone (methods trained on good images), or None."""
        return None

    def decision_threshold(self, parts: dict[str, list[Sample]], test_metrics: dict | None = None, validation_scores=None) -> dict | None:
        """The decision threshold (raw units, ``{"value", "source", ...}``): best F1 on a
        validation split with good and defective images (``validation_scores``: its raw scores
        when the caller has them), else the method's calibration on good images, else best F1 on
        the test split (``test_metrics``; None before evaluation)."""
        from ..evaluate.metrics import image_metrics

        validation = parts.get("validation") or []
        labels = [s.is_defective for s in validation]
        if any(labels) and not all(labels):
            scores = self.raw_scores(validation) if validation_scores is None else validation_scores
            found = image_metrics(labels, scores)
            # what the validation part says of the model: on a small test split AP varies by
            # several hundredths between draws of images (docs/benchmarks.md, the demo)
            return {"value": float(found["threshold"]), "source": "validation (best F1)", "images": len(validation),
                    "validation": {k: found[k] for k in ("ap", "auroc", "n_defective", "tp", "fp", "fn", "tn")}}
        calibrated = self.calibration_threshold(parts)
        if calibrated is not None or test_metrics is None:
            return calibrated
        return {"value": float(test_metrics["threshold"]), "source": "test (best F1; no validation split with good and defective images)"}

    # ------------------------------------------------------------------ run folders

    @classmethod
    def read_config(cls, run_dir: str | Path) -> tuple[MethodConfig, dict]:
        """(training config, the whole config.yaml) of a run of this method."""
        path = Path(run_dir) / runs.CONFIG
        saved = runs.read_yaml(path)
        if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict) or not isinstance(saved.get("model"), dict):
            raise DataError(f"{path}: not a defectkit run config (needs 'train' and 'model')")
        train = dict(saved["train"])
        if saved.get("version", 1) < CONFIG_VERSION:
            train.setdefault("validation_share", 0.0)  # runs made before the validation part trained on all of train
        train.setdefault("method", cls.name)
        try:
            return cls.Config.from_dict(train), saved
        except ConfigError as exc:
            raise DataError(f"{path}: {exc}") from None

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu", weights: str = runs.MODEL) -> "Method":
        """The trained method of a run folder, ready to score (eval mode, on ``device``)."""
        if not str(weights).endswith(".safetensors"):
            raise DataError(f"{weights}: weights are a .safetensors file of the run folder (e.g. {runs.MODEL} or {runs.BEST})")
        run_dir = runs.require_run(Path(run_dir), weights)
        config, saved = cls.read_config(run_dir)
        method = cls(config, device)
        section = saved["model"]
        if not isinstance(section.get("config"), dict):
            raise DataError(f"{run_dir / runs.CONFIG}: its 'model' section has no config")
        try:
            method.model = method.model_from_section(section)
        except ConfigError as exc:
            raise DataError(f"{run_dir / runs.CONFIG}: {exc}") from None
        runs.load_weights(method.model, run_dir / weights)
        method.model = method.acc.prepare(method.model)
        method.setup(run_dir, saved)
        method.eval()
        return method

    @classmethod
    def run_threshold(cls, run_dir: str | Path, weights: str = runs.MODEL) -> dict:
        """The decision threshold (raw units: ``value``) a predictor of the run's ``weights``
        uses, with its ``source`` and ``file`` (:func:`runs.decision_threshold`)."""
        key = "decision_threshold_logit" if cls.raw_is_logit else "decision_threshold"
        return runs.decision_threshold(Path(run_dir), weights, key)


class _ImageItem:
    """A training item that is the preprocessed image alone (picklable for worker processes)."""

    def __init__(self, pre: Preprocessing):
        self.pre = pre

    def __call__(self, sample: Sample) -> tuple[np.ndarray]:
        return (self.pre.image(sample),)

