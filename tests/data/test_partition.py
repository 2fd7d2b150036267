"""Splitting in data/: the train/test split of data without one (the same images as before the
validation part existed), the validation part of the training images, and the official
protocols left as published."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from defectkit.data.partition import AUTO_VALIDATION_SHARE, partition, read_parts, validation_share_for
from defectkit.data.sample import Sample
from defectkit.methods.segdec import SegDecTrainConfig

from layouts import make_ksdd


def samples(n_good: int, n_defective: int, split: str = "all") -> list[Sample]:
    return [Sample(f"{'d' if d else 'g'}{i}", Path(f"{'d' if d else 'g'}{i}.png"), d, split)
            for d, n in ((False, n_good), (True, n_defective)) for i in range(n)]


def legacy_split(items, seed):
    """The 70/30 split runs made before the validation part, as it was written then."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for defective in (False, True):
        group = [s for s in items if s.is_defective == defective]
        order = rng.permutation(len(group))
        cut = int(round(0.7 * len(group)))
        train += [group[i].name for i in order[:cut]]
        test += [group[i].name for i in order[cut:]]
    return train, test


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_data_without_splits_tests_the_same_images_as_before(seed):
    items = samples(23, 9)
    parts = partition(items, test_share=0.3, validation_share=0.0, seed=seed)
    train, test = legacy_split(items, seed)
    assert [s.name for s in parts["test"]] == test and [s.name for s in parts["train"]] == train
    assert {s.split for s in parts["test"]} == {"test"}


def test_the_validation_part_is_stratified_seeded_and_disjoint():
    items = samples(40, 10, "train") + samples(5, 5, "test")
    parts = partition(items, validation_share=0.2, seed=3)
    assert list(parts) == ["train", "validation", "test"]
    val, train = parts["validation"], parts["train"]
    assert (sum(not s.is_defective for s in val), sum(s.is_defective for s in val)) == (8, 2)  # 20% of each class
    assert len(train) == 40 and not {s.name for s in val} & {s.name for s in train}
    assert {s.split for s in val} == {"validation"} and parts["test"] == items[50:]
    assert [s.name for s in partition(items, validation_share=0.2, seed=3)["validation"]] == [s.name for s in val]
    assert [s.name for s in partition(items, validation_share=0.2, seed=4)["validation"]] != [s.name for s in val]
    order = [s.name for s in items[:50]]
    assert [s.name for s in train] == [n for n in order if n in {s.name for s in train}]  # the reader's order kept


def test_a_class_with_one_training_image_keeps_it():
    parts = partition(samples(10, 1, "train") + samples(2, 2, "test"), validation_share=0.5, seed=0)
    assert sum(s.is_defective for s in parts["train"]) == 1 and not any(s.is_defective for s in parts["validation"])


def test_an_existing_validation_split_is_kept():
    items = samples(10, 4, "train") + samples(3, 3, "validation") + samples(3, 3, "test")
    parts = partition(items, validation_share=0.2, seed=0)
    assert parts["validation"] == items[14:20] and len(parts["train"]) == 14


def test_the_default_share_follows_the_protocol():
    assert validation_share_for("folder", None, None) == AUTO_VALIDATION_SHARE
    assert validation_share_for("synthetic", None, None) == AUTO_VALIDATION_SHARE
    assert validation_share_for("ksdd", "33_33", None) == 0.0  # the published protocol trains on the whole list
    assert validation_share_for("ksdd", "all", None) == AUTO_VALIDATION_SHARE
    assert validation_share_for("ksdd", None, 0.1) == 0.1


def test_official_folds_are_untouched_unless_asked(tmp_path):
    root = make_ksdd(tmp_path / "ksdd")
    config = SegDecTrainConfig(dataset="ksdd", data_root=str(root), split="33_33", fold=0)
    parts = read_parts(config)
    assert "validation" not in parts and len(parts["train"]) == 264 and len(parts["test"]) == 135
    held = read_parts(config.replace(validation_share=0.1))
    assert len(held["validation"]) == 264 - len(held["train"]) > 0 and held["test"] == parts["test"]
    again = read_parts(config.replace(validation_share=0.1, split_seed=5))
    assert {s.name for s in again["validation"]} != {s.name for s in held["validation"]}
