"""Device settings: the CPU path is plain fp32 NCHW, bf16 is refused on CPUs, the prefetcher
keeps order and errors; on a CUDA machine a bf16 training step runs (skipped elsewhere)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from defectkit.errors import ConfigError
from defectkit.methods import accel
from defectkit.methods.segdec import SegDecTrainConfig as TrainConfig
from defectkit.methods.trainer import fit


def test_cpu_is_plain_fp32_without_copies():
    acc = accel.resolve("cpu")
    assert (acc.precision, acc.channels_last, acc.cuda) == ("fp32", False, False)
    array = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    t = acc.tensor(array)
    assert t.data_ptr() == array.__array_interface__["data"][0]  # the host array itself, no copy
    with acc.autocast():
        assert torch.ones(2, 2).mm(torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("precision, message", [("bf16", "200x slower"), ("fp16", "one of auto, fp32, bf16")])
def test_refused_precisions(precision, message):
    with pytest.raises(ConfigError, match=message):
        accel.resolve("cpu", precision)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        accel.resolve("cuda")


def test_training_with_bf16_on_cpu_stops_before_writing_the_run(tmp_path):
    config = TrainConfig(dataset="synthetic", data_root=str(tmp_path / "none"), precision="bf16", preset="tiny", input_size=(32, 32))
    with pytest.raises(ConfigError, match="bf16"):
        fit(config, tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_old_run_configs_without_precision_load():
    data = TrainConfig(dataset="synthetic").to_dict()
    del data["precision"]
    assert TrainConfig.from_dict(data).precision == "auto"


def test_prefetch_keeps_order_and_runs_ahead():
    produced = []

    def items():
        for i in range(10):
            produced.append(i)
            yield i

    got = []
    for item in accel.prefetch(items(), depth=2):
        got.append(item)
        if item == 0:  # the producer fills its queue while the consumer holds the first item
            for _ in range(200):
                if len(produced) >= 3:
                    break
                threading.Event().wait(0.005)
            assert len(produced) >= 3
    assert got == list(range(10))


def test_prefetch_raises_the_producers_error_in_place():
    def items():
        yield 1
        yield 2
        raise ValueError("bad image 3")

    got = []
    with pytest.raises(ValueError, match="bad image 3"):
        for item in accel.prefetch(items()):
            got.append(item)
    assert got == [1, 2]


def test_prefetch_stops_its_thread_when_the_consumer_stops():
    before = threading.active_count()
    for item in accel.prefetch(iter(range(1000)), depth=1):
        if item == 3:
            break
    assert not any(t.name == "defectkit-prefetch" and t.is_alive() for t in threading.enumerate())
    assert threading.active_count() <= before


def test_prefetch_disabled_is_the_plain_iterator():
    assert list(accel.prefetch(iter("abc"), enabled=False)) == ["a", "b", "c"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_training_step_on_cuda(tmp_path):
    from defectkit.data.synthetic import generate

    data = generate(tmp_path / "data", n_train_good=4, n_train_defective=2, n_test_good=2, n_test_defective=2, size=(64, 64), seed=0)
    config = TrainConfig(dataset="synthetic", data_root=str(data), preset="tiny", input_size=(64, 64), epochs=1, batch_size=2, validate_every=0, device="cuda")
    run = fit(config, tmp_path / "run", log=lambda _: None)
    assert accel.resolve("cuda").precision in ("bf16", "fp32")
    assert (run / "model.safetensors").is_file()
