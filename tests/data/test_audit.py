"""The data audit: `datasets inspect` reports every problem at once, training stops on the cheap ones."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter

import numpy as np
import pytest
from layouts import image, make_dagm, make_folder, make_ksdd, mask, write
from PIL import Image

from defectkit.data.audit import (
    Audit,
    cheap_audit,
    check_training_data,
    identical_groups,
)
from defectkit.data.imageio import MaskError, MaskSizeError, load_mask, read_mask_file
from defectkit.data.readers import read_folder
from defectkit.data.sample import Sample
from defectkit.data.splits import load_split
from defectkit.errors import DataError


def inspect_json(run_cli, *args):
    code, out, err = run_cli("datasets", "inspect", *map(str, args), "--json")
    return code, json.loads(out) if out.strip() else None, err


def broken_folder(root):
    """A train/test folder dataset with one of each problem the folder layout can have."""
    for i in range(3):
        write(root / "train" / "good" / f"g{i}.png", image(seed=i))
    for i in range(2):
        write(root / "test" / "good" / f"t{i}.png", image(seed=20 + i))
        write(root / "test" / "defective" / f"td{i}.png", image(seed=30 + i))
    write(root / "train" / "defective" / "dd.png", image(seed=40))
    shutil.copy(root / "train" / "defective" / "dd.png", root / "train" / "good" / "same_as_dd.png")  # two labels
    shutil.copy(root / "train" / "good" / "g0.png", root / "test" / "good" / "leak.png")  # train and test
    write(root / "train" / "defective" / "x.png", image(seed=50))  # x.png and x.jpg share masks/x.png
    write(root / "train" / "defective" / "x.jpg", image(seed=51))
    write(root / "masks" / "x.png", mask())
    write(root / "train" / "defective" / "cam1" / "img.png", image(seed=52))  # nested, one flat mask
    write(root / "train" / "defective" / "cam2" / "img.png", image(seed=53))
    write(root / "masks" / "img.png", mask())
    write(root / "masks" / "orphan.png", mask())  # no image of that name
    write(root / "train" / "defective" / "small.png", image(seed=54))
    write(root / "masks" / "small.png", mask(10, 10))  # image is 16x24
    write(root / "train" / "defective" / "colour.png", image(seed=55))
    colour = np.zeros((24, 16, 3), np.uint8)
    colour[2:5, 2:5] = (0, 0, 255)
    colour[8:12, 8:12] = (0, 255, 0)
    write(root / "masks" / "colour.png", colour)
    (root / "test" / "good" / "empty.png").write_bytes(b"")
    png = (root / "train" / "good" / "g1.png").read_bytes()
    (root / "test" / "good" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "test" / "defective" / "notes.png").write_text("not an image")
    return root


def test_inspect_reports_every_problem_of_a_folder_at_once(tmp_path, run_cli):
    root = broken_folder(tmp_path / "mine")
    code, report, _ = inspect_json(run_cli, "--dataset", "folder", "--data-root", root)
    assert code == 1
    assert report["problem_counts"] == {
        "ambiguous_mask": 2, "identical_images": 2, "unreadable": 3, "mask_size": 1, "mask_mode": 1, "orphan_mask": 1,
    }
    by_kind: dict[str, list[dict]] = {}
    for p in report["problems"]:
        assert set(p) == {"kind", "files", "message"} and "\n" not in p["message"]
        by_kind.setdefault(p["kind"], []).append(p)
    d = root / "train" / "defective"
    ambiguous = {frozenset(p["files"]) for p in by_kind["ambiguous_mask"]}
    assert ambiguous == {
        frozenset({str(root / "masks" / "x.png"), str(d / "x.png"), str(d / "x.jpg")}),
        frozenset({str(root / "masks" / "img.png"), str(d / "cam1" / "img.png"), str(d / "cam2" / "img.png")}),
    }
    messages = " ".join(p["message"] for p in report["problems"])
    assert f"{root / 'masks' / 'x.png'}: mask matched by file stem to both {d / 'x.jpg'} and {d / 'x.png'}" in messages
    assert "labelled both good and defective" in messages and "in the train and the test split" in messages
    assert {frozenset(p["files"]) for p in by_kind["identical_images"]} == {
        frozenset({str(d / "dd.png"), str(root / "train" / "good" / "same_as_dd.png")}),
        frozenset({str(root / "train" / "good" / "g0.png"), str(root / "test" / "good" / "leak.png")}),
    }
    assert {p["files"][0] for p in by_kind["unreadable"]} == {str(root / "test" / "good" / n) for n in ("empty.png", "truncated.png")} | {str(root / "test" / "defective" / "notes.png")}
    assert by_kind["mask_size"][0]["message"] == f"{root / 'masks' / 'small.png'}: mask is 10x10 but its image small.png is 16x24"
    assert by_kind["mask_mode"][0]["files"][0] == str(root / "masks" / "colour.png") and "colour" in by_kind["mask_mode"][0]["message"]
    assert by_kind["orphan_mask"][0]["files"] == [str(root / "masks" / "orphan.png")]
    # the same problems as a table, and the reader used by training refuses the layout
    code, out, _ = run_cli("datasets", "inspect", "--dataset", "folder", "--data-root", root)
    assert code == 1 and "problems: " in out and "10 problem(s)" in out
    for kind in report["problem_counts"]:
        assert kind in out
    with pytest.raises(DataError, match="mask matched by file stem to both"):
        read_folder(root)


def test_inspect_reports_every_problem_of_a_labels_csv(tmp_path, run_cli):
    root = tmp_path / "csv"
    for name in ("a", "b", "c", "d"):
        write(root / "img" / f"{name}.png", image(seed=ord(name)))
    write(root / "m" / "shared.png", mask())
    (root / "labels.csv").write_text(
        "image,label,split,mask\n"
        "img/a.png,good,train,\n"
        "img/a.png,good,train,\n"  # listed twice
        "img/b.png,defective,train,m/shared.png\n"
        "img/b.png,defective,test,m/shared.png\n"  # train and test (the explicit shared mask is fine)
        "img/c.png,defective,test,m/shared.png\n"
        "img/gone.png,good,test,\n"  # missing
        "img/d.png,maybe,train,\n"  # bad label
        "img/d.png,good,train,m/nope.png\n"  # missing mask
    )
    code, report, _ = inspect_json(run_cli, "--dataset", "folder", "--data-root", root)
    assert code == 1
    assert report["problem_counts"] == {"missing": 2, "bad_row": 1, "listed_twice": 1, "train_test_overlap": 1, "missing_class": 1}
    messages = [p["message"] for p in report["problems"]]
    assert f"{root / 'img' / 'a.png'}: listed 2 times in split 'train'" in messages
    assert f"{root / 'img' / 'b.png'}: in both the train and the test split" in messages
    assert "split 'test' has no good images (2 defective): AP and AUROC would be undefined" in messages
    assert any("line 7: image" in m and "gone.png not found" in m for m in messages)
    assert any("line 8: label 'maybe'" in m for m in messages)


def test_inspect_reports_every_file_missing_against_the_split_lists(tmp_path, run_cli):
    root = make_ksdd(tmp_path / "ksdd")
    for folder in ("kos07", "kos12", "kos40"):
        shutil.rmtree(root / folder)
    (root / "kos05" / "Part2_label.bmp").unlink()
    write(root / "kos09" / "Part9_label.bmp", mask())  # its image Part9.jpg does not exist
    code, report, _ = inspect_json(run_cli, "--dataset", "ksdd", "--data-root", root)
    assert code == 1
    missing = sorted(p["files"][0] for p in report["problems"] if p["kind"] == "missing")
    assert missing == sorted([str(root / "kos05" / "Part2_label.bmp")] + [str(root / f) for f in ("kos07", "kos12", "kos40")])
    assert [p["files"] for p in report["problems"] if p["kind"] == "orphan_mask"] == [[str(root / "kos09" / "Part9_label.bmp")]]
    assert all(f["error"] for f in report["folds"])  # each fold's reader still stops, as before
    dagm, _ = make_dagm(tmp_path / "dagm", k=1, split="5")
    for i, path in enumerate(sorted((dagm / "Class1").glob("T*/*.PNG"))):  # the dummy's images are all alike
        write(path, image(8, 8, seed=i))
    names = [n for n, _ in load_split("dagm", "5")["classes"][0]["test"][20:23]]
    for name in names:
        (dagm / "Class1" / "Test" / name).unlink()
    code, report, _ = inspect_json(run_cli, "--dataset", "dagm", "--data-root", dagm, "--split", "5")
    assert code == 1 and report["problem_counts"] == {"missing": 3}
    assert sorted(p["files"][0] for p in report["problems"]) == sorted(str(dagm / "Class1" / "Test" / n) for n in names)


def test_a_clean_layout_exits_0(tmp_path, run_cli):
    root = make_folder(tmp_path / "mine")
    code, report, _ = inspect_json(run_cli, "--dataset", "folder", "--data-root", root)
    assert code == 1 and report["problem_counts"] == {"identical_images": 5}  # the dummy's test images are its train images
    for i, path in enumerate(sorted((root / "test").rglob("*.png"))):
        write(path, image(seed=100 + i))
    code, report, _ = inspect_json(run_cli, "--dataset", "folder", "--data-root", root)
    assert code == 0 and report["problems"] == [] and report["problem_counts"] == {}
    assert report["images"] == 10 and report["checked"] == 10
    code, out, _ = run_cli("datasets", "inspect", "--dataset", "folder", "--data-root", root)
    assert code == 0 and "checked 10 images and their masks: all files ok" in out


# --- training runs the cheap part ----------------------------------------------------------


def test_training_refuses_a_folder_of_only_defective_images(tmp_path, run_cli):
    root = tmp_path / "bad_only"
    for i in range(6):
        write(root / "defective" / f"d{i}.png", image(32, 32, seed=i))
    out = tmp_path / "run"
    code, _, err = run_cli("train", "--method", "segdec", "--dataset", "folder", "--data-root", root, "--preset", "tiny", "--input-size", "32x32",
                           "--epochs", "1", "--out", out)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert err.startswith("error: split 'train' has no good images (")
    assert "(and 1 more problem(s)" in err  # the test split has no good image either
    assert not out.exists()  # stopped before the run folder


def samples(names, split, defective, folder):
    return [Sample(n, folder / n, defective, split) for n in names]


def test_check_training_data_refuses_what_makes_the_result_wrong(tmp_path):
    for i in range(4):
        write(tmp_path / f"g{i}.png", image(seed=i))
        write(tmp_path / f"d{i}.png", image(seed=10 + i))
    good = lambda names, split: samples(names, split, False, tmp_path)
    bad = lambda names, split: samples(names, split, True, tmp_path)
    check_training_data({"train": good(["g0.png", "g1.png"], "train") + bad(["d0.png"], "train"),
                         "test": good(["g2.png"], "test") + bad(["d1.png"], "test")}, "folder", needs_defects=True)
    cases = [
        ({"train": good(["g0.png", "g0.png"], "train") + bad(["d0.png"], "train"), "test": good(["g2.png"], "test") + bad(["d1.png"], "test")},
         "g0.png: listed 2 times in split 'train'"),
        ({"train": good(["g0.png"], "train") + bad(["d0.png"], "train"), "test": good(["g0.png"], "test") + bad(["d1.png"], "test")},
         "g0.png: in both the train and the test split"),
        ({"train": good(["g0.png"], "train"), "test": good(["g2.png"], "test") + bad(["d1.png"], "test")},
         "split 'train' has no defective images"),
        ({"train": good(["g0.png"], "train") + bad(["d0.png"], "train"), "test": bad(["d1.png"], "test")},
         "split 'test' has no good images"),
    ]
    for parts, message in cases:
        with pytest.raises(DataError, match=message):
            check_training_data(parts, "folder", needs_defects=True)
    shutil.copy(tmp_path / "g0.png", tmp_path / "copy.png")
    parts = {"train": good(["g0.png"], "train") + bad(["d0.png"], "train"), "test": good(["copy.png"], "test") + bad(["d1.png"], "test")}
    with pytest.raises(DataError, match=r"copy.png: byte-identical images in the train and the test split"):
        check_training_data(parts)
    parts["test"][0] = samples(["g1.png"], "test", False, tmp_path)[0]
    parts["train"].append(samples(["copy.png"], "train", True, tmp_path)[0])
    with pytest.raises(DataError, match=r"g0.png and .*copy.png: byte-identical images labelled both good and defective$"):
        check_training_data(parts)


def test_identical_groups_reads_only_files_sharing_a_size(tmp_path, monkeypatch):
    from defectkit.data import audit

    write(tmp_path / "a.png", image(seed=1))
    shutil.copy(tmp_path / "a.png", tmp_path / "b.png")
    (tmp_path / "c.bin").write_bytes(b"x" * 100)
    (tmp_path / "d.bin").write_bytes(b"y" * 100)  # same size, other bytes
    (tmp_path / "e.bin").write_bytes(b"z" * 7)
    read = []
    real = audit._hash
    monkeypatch.setattr(audit, "_hash", lambda p, limit: read.append(p.name) or real(p, limit))
    groups = identical_groups(sorted(tmp_path.iterdir()))
    assert [sorted(p.name for p in g) for g in groups] == [["a.png", "b.png"]]
    assert "e.bin" not in read and Counter(read)["c.bin"] == 1


def test_known_duplicates_of_the_official_ksdd_release_are_notes(ksdd_root, run_cli):
    from defectkit.data.readers import read_ksdd

    for fold in range(3):
        parts = {}
        for s in read_ksdd(ksdd_root, "33_33", fold):
            parts.setdefault(s.split, []).append(s)
        started = time.perf_counter()
        audit = cheap_audit(parts, Audit(), "ksdd", needs_defects=True)
        seconds = time.perf_counter() - started
        assert audit.problems == [], audit.problems
        assert audit.notes and all(n.endswith("in the official release; kept as published") for n in audit.notes)
        assert seconds < 30, seconds  # size-first: only a few hundred same-size files are read
        check_training_data(parts, "ksdd", needs_defects=True)


# --- masks -----------------------------------------------------------------------------------


def test_mask_modes(tmp_path):
    """Grey of any integer depth, bilevel and palette masks: >0 is defect; colour and float refused."""
    m = mask()
    write(tmp_path / "grey.png", m)
    write(tmp_path / "ones.png", (m > 0).astype(np.uint8))
    write(tmp_path / "sixteen.png", (m > 0).astype(np.uint16) * 1000)
    write(tmp_path / "grey_rgb.png", np.dstack([m, m, m]))
    palette = Image.fromarray((m > 0).astype(np.uint8), mode="L").convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 1 = red: the index counts, not the colour
    palette.save(tmp_path / "palette.bmp")
    for name in ("grey.png", "ones.png", "sixteen.png", "grey_rgb.png", "palette.bmp"):
        np.testing.assert_array_equal(read_mask_file(tmp_path / name), (m > 0).astype(np.uint8), err_msg=name)
    colour = np.dstack([m, np.zeros_like(m), m // 2])
    write(tmp_path / "colour.png", colour)
    with pytest.raises(MaskError, match=r"colour.png: mask is a colour image"):
        read_mask_file(tmp_path / "colour.png")
    Image.fromarray(m.astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(MaskError, match=r"float.tif: image mode F cannot be a mask"):
        read_mask_file(tmp_path / "float.tif")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png: file is empty"):
        read_mask_file(tmp_path / "empty.png")


def test_load_mask_refuses_a_mask_of_another_size(tmp_path):
    write(tmp_path / "x.png", image(24, 16))
    write(tmp_path / "x_mask.png", mask(12, 8))
    sample = Sample("x", tmp_path / "x.png", True, "test", mask_path=tmp_path / "x_mask.png")
    with pytest.raises(MaskSizeError) as caught:
        load_mask(sample)
    assert str(caught.value) == f"{tmp_path / 'x_mask.png'}: mask is 8x12 but its image x.png is 16x24"
    from defectkit.evaluate.run_eval import mask_at

    with pytest.raises(DataError, match="mask is 8x12"):  # never resized into the pixel metrics
        mask_at(sample, (8, 12))
    write(tmp_path / "x_mask.png", mask(24, 16))
    assert load_mask(sample).shape == (24, 16)
