"""One typed config system: YAML, the command line and Python share one coercion, errors are one
line naming the field, ``--print-config`` round-trips, and ``train --help`` follows the method."""

from __future__ import annotations

import pytest

from defectkit import runs
from defectkit.errors import ConfigError
from defectkit.methods.registry import get_method, make_config, method_names

# method-specific options: each must appear in its own --help and no other's
OWN_OPTIONS = {"segdec": "--delta", "ear": "--mask-share", "riad": "--ks"}


@pytest.mark.parametrize("values, field, expected", [
    ({"learning_rate": "1e-3"}, "learning_rate", 1e-3),  # YAML 1.1 reads 1e-3 as a string
    ({"learning_rate": 1}, "learning_rate", 1.0),
    ({"epochs": "20"}, "epochs", 20),
    ({"epochs": 20.0}, "epochs", 20),
    ({"input_size": "128x64"}, "input_size", (128, 64)),  # the CLI's spelling
    ({"input_size": "128X64"}, "input_size", (128, 64)),
    ({"input_size": [128, 64]}, "input_size", (128, 64)),
    ({"input_size": "128, 64"}, "input_size", (128, 64)),
    ({"input_size": ["128", "64"]}, "input_size", (128, 64)),
    ({"fold": "2"}, "fold", 2),
    ({"frequency_sampling": "false"}, "frequency_sampling", False),
])
def test_numbers_and_sizes_in_any_spelling(values, field, expected):
    config = make_config("segdec", {"dataset": "synthetic", **values})
    assert getattr(config, field) == expected


@pytest.mark.parametrize("values, message", [
    ({"learning_rate": "fast"}, "learning_rate: expected a valid number"),
    ({"learning_rate": "nan"}, "learning_rate: expected a finite number"),
    ({"learning_rate": -1}, "learning_rate must be positive"),
    ({"epochs": "twenty"}, "epochs: expected a valid integer"),
    ({"epochs": 2.5}, "epochs: expected a valid integer"),
    ({"epochs": True}, "epochs: expected a number, not true/false"),
    ({"input_size": "128y64"}, "input_size: expected WIDTHxHEIGHT such as 256x704"),
    ({"input_size": [128]}, "input_size"),
    ({"input_size": "100x64"}, "multiples of 8"),
    ({"channels": 2}, "channels must be 1 or 3"),
    ({"device": "tpu"}, "device must be cpu, cuda or cuda:N, got 'tpu'"),
    ({"epochz": 3}, "unknown training option(s) epochz; valid: method, dataset"),
])
def test_bad_values_are_one_line_naming_the_field(values, message):
    with pytest.raises(ConfigError) as info:
        make_config("segdec", {"dataset": "synthetic", **values})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_errors_name_where_the_value_came_from():
    with pytest.raises(ConfigError, match=r"^opts\.yaml: epochs: expected a valid integer.*'ten'"):
        make_config("ear", {"epochs": "ten"}, source={"epochs": "opts.yaml"})
    with pytest.raises(ConfigError, match=r"^--lr: learning_rate"):
        make_config("riad", {"learning_rate": "x"}, source={"learning_rate": "--lr"})


@pytest.mark.parametrize("name", method_names())
def test_print_config_is_accepted_back_unchanged(name, tmp_path, run_cli):
    from defectkit.config import cli_fields

    trains = "learning_rate" in {field for field, _, _ in cli_fields(get_method(name).Config)}  # PatchCore takes no gradient step
    args = ["train", "--method", name, "--dataset", "synthetic", "--epochs", "3", "--input-size", "64x128", *(["--lr", "1e-3"] if trains else []), "--print-config"]
    code, printed, err = run_cli(*args)
    assert code == 0, err
    saved = tmp_path / "effective.yaml"
    saved.write_text(printed)
    code, again, err = run_cli("train", saved, "--print-config")
    assert code == 0, err
    assert again == printed
    loaded = runs.read_yaml(saved)
    assert loaded["method"] == name and loaded["epochs"] == 3 and loaded["input_size"] == [64, 128] and (loaded["learning_rate"] == 1e-3 or not trains)
    config_cls = get_method(name).Config
    assert set(config_cls.model_fields) <= set(loaded)  # every field, with its value


def test_yaml_file_values_are_coerced_like_the_cli(tmp_path, run_cli):
    options = tmp_path / "options.yaml"
    options.write_text("method: riad\ndataset: ksdd\nsplit: 33_33\nlearning_rate: 1e-3\nepochs: '20'\ninput_size: 128x64\nks: 4,8\n")
    code, printed, err = run_cli("train", options, "--print-config")
    assert code == 0, err
    out = tmp_path / "out.yaml"
    out.write_text(printed)
    loaded = runs.read_yaml(out)
    assert (loaded["split"], loaded["learning_rate"], loaded["epochs"], loaded["input_size"], loaded["ks"]) == ("33_33", 1e-3, 20, [128, 64], [4, 8])
    assert "split: '33_33'" in printed  # quoted: YAML 1.1 readers would take 33_33 for 3333
    options.write_text("method: riad\nepochs: ten\n")
    code, _, err = run_cli("train", options, "--out", tmp_path / "run")
    assert code == 2 and f"{options}: epochs: expected a valid integer" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", method_names())
def test_train_help_lists_only_the_methods_options(name, run_cli):
    code, out, _ = run_cli("train", "--method", name, "--help")
    assert code == 0
    for other, flag in OWN_OPTIONS.items():
        assert (flag in out) == (other == name), (name, flag)
    for flag in ("--epochs", "--input-size", "--workers", "--cache-mb", "--validation-share", "--print-config"):
        assert flag in out


def test_named_settings_sit_under_the_given_values():
    weak = make_config("segdec", {"dataset": "ksdd", "split": "33_0"})
    assert (weak.learning_rate, weak.delta, weak.dynamic_balancing) == (0.01, 1.0, False)  # the reference's weak settings
    assert make_config("segdec", {"dataset": "ksdd", "split": "33_0", "learning_rate": "0.5"}).learning_rate == 0.5
    assert make_config("segdec", {"dataset": "folder"}).preset == "small"  # no paper settings for it: the custom ones
    with pytest.raises(ConfigError, match="unknown config 'mvtec'"):
        make_config("segdec", {}, named="mvtec")
    with pytest.raises(ConfigError, match="--method ear has no named settings"):
        make_config("ear", {}, named="ksdd")


# every train flag of the version before the typed configs, by method (users' scripts use them)
OLD_FLAGS = {
    "segdec": ["-d", "ksdd", "--data-root", "/d", "--split", "33_33", "--fold", "1", "-c", "ksdd", "--preset", "small", "--input-size", "256x704",
               "--channels", "1", "--epochs", "3", "--lr", "0.5", "--batch-size", "2", "--seed", "4", "--device", "cpu", "--precision", "fp32",
               "--delta", "0.5", "--dilate", "5", "--weight-p", "1.5", "--weight-max", "2", "--no-dynamic-balancing", "--gradient-adjustment",
               "--no-weighted-segmentation", "--frequency-sampling", "--validate-every", "2", "-o", "/r", "--no-eval"],
    "ear": ["-m", "ear", "-d", "ksdd", "--data-root", "/d", "--preset", "small", "--input-size", "128x320", "--epochs", "3", "--lr", "1e-3",
            "--batch-size", "2", "--weight-decay", "0", "--mean-filter", "9", "--threshold-quantile", "0.95", "--holdout", "0.2",
            "--attention-weights", "/w.safetensors", "--mask-rule", "threshold", "--mask-share", "0.2", "--mask-threshold", "0.6",
            "--fill", "mosaic", "--inference-skips", "0111", "--out", "/r", "--eval"],
    "riad": ["--method", "riad", "--dataset", "ksdd", "--data-root", "/d", "--ks", "4,8", "--epochs", "3", "--out", "/r"],
}


@pytest.mark.parametrize("name", list(OLD_FLAGS))
def test_the_flags_of_the_previous_version_still_work(name, tmp_path, run_cli):
    code, printed, err = run_cli("train", *OLD_FLAGS[name], "--print-config")
    assert code == 0, err
    out = tmp_path / "c.yaml"
    out.write_text(printed)
    values = runs.read_yaml(out)
    flags = OLD_FLAGS[name]
    assert values["method"] == name and values["epochs"] == 3 and values["data_root"] == "/d"
    if name == "segdec":
        assert (values["learning_rate"], values["delta"], values["dynamic_balancing"], values["weighted_segmentation"], values["precision"]) == (0.5, 0.5, False, False, "fp32")
        assert values["split"] == "33_33" and values["fold"] == 1 and values["input_size"] == [256, 704]
    if name == "ear":
        assert values["inference_skips"] == [False, True, True, True] and values["fill"] == "mosaic" and values["learning_rate"] == 1e-3
    if name == "riad":
        assert values["ks"] == [4, 8]
    assert "--print-config" not in flags
