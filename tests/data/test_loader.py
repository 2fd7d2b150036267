"""The streaming data path: batches in the caller's order whatever the number of worker processes,
a decode cache bounded in bytes, bad files as one line, and the same training either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from defectkit.data.loader import MB, DecodeCache, StreamLoader, stream
from defectkit.data.preprocess import Preprocessing
from defectkit.data.synthetic import generate
from defectkit.errors import DataError
from defectkit.methods.segdec import SegDecTrainConfig
from defectkit.methods.trainer import fit


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("loader") / "synthetic", n_train_good=6, n_train_defective=4, n_test_good=2, n_test_defective=2, size=(32, 64), seed=5)


@pytest.fixture(scope="module")
def samples(data):
    from defectkit.data.datasets import read_dataset

    return [s for s in read_dataset("synthetic", data) if s.split == "train"]


PRE = Preprocessing(input_size=(32, 64), channels=1, dilate=3, weight_p=2.0, weight_max=3.0)


class Counting:
    """``PRE.load`` that counts its calls in this process (workers=0)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, sample):
        self.calls += 1
        return PRE.load(sample)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_come_in_the_callers_order_with_the_right_items(samples, workers):
    loader = StreamLoader(samples, PRE.load, workers=workers, cache_mb=1)
    order = [[3, 1, 4], [9, 0], [], [2, 5, 6, 7, 8]]
    try:
        for epoch in range(2):  # a second pass (the workers persist, items come from the cache)
            got = list(loader.batches(order))
            assert [list(indices) for indices, _ in got] == order
            for indices, (images, targets, weights) in got:
                assert images.shape == (len(indices), 1, 64, 32) and targets.shape == (len(indices), 8, 4)
                for i, image, target, weight in zip(indices, images, targets, weights):
                    ref = PRE.load(samples[i])
                    assert np.array_equal(image.numpy(), ref[0]) and np.array_equal(target.numpy(), ref[1]) and np.array_equal(weight.numpy(), ref[2])
    finally:
        loader.close()


def test_the_cache_is_bounded_in_bytes_and_fills_by_priority(samples):
    example = PRE.load(samples[0])
    item = sum(a.nbytes for a in example)
    cache = DecodeCache(len(samples), example, budget=3 * item + item // 2, priority=[5, 2, 7, 0, 1])
    assert cache.slots == 3 and cache.nbytes == 3 * item
    for i in range(len(samples)):
        cache.put(i, PRE.load(samples[i]))
    held = [i for i in range(len(samples)) if cache.get(i) is not None]
    assert held == [2, 5, 7]  # the first three of the priority order, nothing else
    assert np.array_equal(cache.get(7)[0], PRE.load(samples[7])[0])
    assert DecodeCache(len(samples), example, budget=0).slots == 0


def test_cached_items_are_decoded_once(samples):
    load = Counting()
    loader = StreamLoader(samples, load, workers=0, cache_mb=100)
    everything = [list(range(len(samples)))]
    for _ in range(3):
        list(loader.batches(everything))
    assert load.calls == len(samples)  # the first pass decoded each once; later passes read the cache
    small = Counting()
    item_mb = sum(a.nbytes for a in PRE.load(samples[0])) / MB
    loader = StreamLoader(samples, small, workers=0, cache_mb=2.5 * item_mb)
    for _ in range(3):
        list(loader.batches(everything))
    assert small.calls == 2 + 3 * (len(samples) - 2)  # two places: the rest is decoded every pass


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_file_is_one_line_naming_it(samples, tmp_path, workers):
    import dataclasses

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad = samples[:3] + [dataclasses.replace(samples[3], image_path=broken)]
    loader = StreamLoader(bad, PRE.load, workers=workers, cache_mb=0)
    try:
        with pytest.raises(DataError) as info:
            list(loader.batches([[0, 1], [2, 3]]))
    finally:
        loader.close()
    assert str(info.value).startswith(str(broken)) and "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_stream_scores_in_order(samples):
    got = list(stream(samples, lambda s: (PRE.image(s),), batch_size=4))
    assert [len(part) for part, _ in got] == [4, 4, 2]
    assert [s.name for part, _ in got for s in part] == [s.name for s in samples]


def test_training_is_the_same_with_workers_and_without_a_cache(data, tmp_path):
    base = dict(dataset="synthetic", data_root=str(data), preset="tiny", input_size=(64, 128), dilate=3, epochs=2, batch_size=3,
                learning_rate=0.1, delta=1.0, validate_every=0)
    runs = {}
    for name, extra in {"plain": {}, "workers": {"workers": 2}, "no-cache": {"cache_mb": 0}}.items():
        runs[name] = load_file(str(fit(SegDecTrainConfig(**base, **extra), tmp_path / name, log=lambda _: None) / "model.safetensors"))
    for name in ("workers", "no-cache"):
        assert all(torch.equal(runs["plain"][k], runs[name][k]) for k in runs["plain"]), name


FORK_AFTER_THREADS = """
import sys, numpy as np, cv2
cv2.setNumThreads(2)
cv2.resize(np.zeros((3000, 3000), np.float32), (1500, 1500))  # OpenCV's thread pool is running now
from defectkit.data.datasets import read_dataset
from defectkit.data.loader import StreamLoader
from defectkit.data.preprocess import Preprocessing
pre = Preprocessing(input_size=(32, 64), channels=1, dilate=3)
samples = [s for s in read_dataset("synthetic", sys.argv[1]) if s.split == "train"]
loader = StreamLoader(samples, pre.load, workers=2, cache_mb=1)
for _ in range(2):
    assert sum(len(i) for i, _ in loader.batches([[0, 1, 2], [3, 4]])) == 5
loader.close()
assert cv2.getNumThreads() == 2  # given back
print("ok")
"""


def test_workers_start_after_opencv_ran_its_threads(data):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", FORK_AFTER_THREADS, str(data)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
