"""Which images train, validate and test: the dataset's own splits, completed where it has none.

* Data without any split (a ``good/`` + ``defective/`` folder, a CSV without a split column,
  ``--split all``) is split into train and test: a seeded, stratified ``test_share`` (30%) of
  each class is tested.
* Data without a validation split gets a **validation part**: a seeded, stratified share of
  each class of the training images (``validation_share``; by default 20%, but none for the
  datasets' official protocols, which train on the whole published training list). The
  production threshold and the best epoch are chosen there, never on the test images. A class
  with one training image keeps it for training.

Every split is a pure function of the samples, the shares and the seed, so evaluation, the
report and ``defectkit threshold`` read the same parts as training did.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .sample import Sample

AUTO_VALIDATION_SHARE = 0.2
SPLIT_ORDER = ("train", "validation", "test")


def validation_share_for(dataset: str, split: str | None, share: float | None) -> float:
    """The share in use: ``share``, or the default: none for an official protocol, else 20%."""
    if share is not None:
        return float(share)
    from .datasets import get_dataset

    protocol = get_dataset(dataset).has_official_splits and split != "all"
    return 0.0 if protocol else AUTO_VALIDATION_SHARE


def _stratified(samples: list[Sample], share: float, rng: np.random.Generator, keep_one: bool) -> tuple[list[Sample], list[Sample]]:
    """(kept, taken): ``share`` of each class taken, in a seeded order."""
    kept, taken = [], []
    for defective in (False, True):
        group = [s for s in samples if s.is_defective == defective]
        order = rng.permutation(len(group))
        count = len(group) - int(round((1 - share) * len(group)))
        if keep_one:
            count = min(count, max(len(group) - 1, 0))
        kept += [group[i] for i in order[count:]]
        taken += [group[i] for i in order[:count]]
    return kept, taken


def partition(samples: list[Sample], *, test_share: float = 0.3, validation_share: float = 0.0, seed: int = 0) -> dict[str, list[Sample]]:
    """Samples by split (train, validation, test) as described above."""
    parts: dict[str, list[Sample]] = {}
    for s in samples:
        parts.setdefault(s.split, []).append(s)
    if set(parts) == {"all"}:
        # the order of draws is the one runs made before the validation part existed
        rng = np.random.default_rng(seed)
        train, test = [], []
        for defective in (False, True):
            group = [s for s in samples if s.is_defective == defective]
            order = rng.permutation(len(group))
            cut = int(round((1 - test_share) * len(group)))
            train += [dataclasses.replace(group[i], split="train") for i in order[:cut]]
            test += [dataclasses.replace(group[i], split="test") for i in order[cut:]]
        parts = {"train": train, "test": test}
    if validation_share > 0 and not parts.get("validation") and parts.get("train"):
        kept, taken = _stratified(parts["train"], validation_share, np.random.default_rng([seed, 2]), keep_one=True)
        if taken:
            order = {id(s): i for i, s in enumerate(parts["train"])}  # keep the reader's order
            parts["train"] = sorted(kept, key=lambda s: order[id(s)])
            parts["validation"] = [dataclasses.replace(s, split="validation") for s in sorted(taken, key=lambda s: order[id(s)])]
    return {k: parts[k] for k in sorted(parts, key=lambda k: (SPLIT_ORDER.index(k) if k in SPLIT_ORDER else len(SPLIT_ORDER), k))}


def read_parts(config, data_root=None, of_run: bool = False) -> dict[str, list[Sample]]:
    """A training config's data by split, exactly as training read it (``data_root``: where the
    data is now, if it moved). ``of_run``: the data of a trained run, so a data root that is
    not there is an error: a reader that makes its data (synthetic) must not make other data
    to evaluate on."""
    from pathlib import Path

    from ..errors import DataError
    from .datasets import read_dataset

    root = data_root if data_root is not None else config.data_root
    if of_run and root is not None and not Path(root).exists():
        moved = f" (the run was trained on {config.data_root})" if data_root is not None else ""
        raise DataError(f"{root}: data root not found{moved}; pass --data-root where the run's data is now")
    seed = config.seed if config.split_seed is None else config.split_seed
    samples = read_dataset(config.dataset, root, config.split, config.fold)
    share = validation_share_for(config.dataset, config.split, config.validation_share)
    return partition(samples, test_share=config.test_share, validation_share=share, seed=seed)
