from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from layouts import image, make_dagm, make_folder, make_ksdd, make_ksdd2, make_severstal, mask, rle_encode, write

from defectkit.data.datasets import DATASETS, read_dataset
from defectkit.data.imageio import load_mask, rle_decode
from defectkit.data.readers import read_dagm, read_folder, read_ksdd, read_ksdd2, read_severstal
from defectkit.data.splits import available_splits, load_split
from defectkit.errors import DataError


def counts(samples):
    return Counter((s.split, s.is_defective, s.pixel_labelled) for s in samples)


# --- split lists shipped as package data -------------------------------------------------


def test_every_published_split_is_shipped():
    assert available_splits("ksdd") == ["5_5", "10_10", "15_15", "20_20", "25_25", "33_0", "33_5", "33_10", "33_15", "33_20", "33_33"]
    assert available_splits("ksdd2") == ["0", "16", "53", "126", "246"]
    assert available_splits("dagm") == ["0", "5", "15", "45", "1000"]
    assert len(available_splits("severstal")) == 29


def test_split_flags_round_trip():
    ksdd = load_split("ksdd", "33_10")["folds"]
    assert len(ksdd) == 3
    for fold in ksdd:
        folders = [n for n, _ in fold["train"]] + [n for n, _ in fold["test"]]
        assert sorted(folders) == [f"kos{k:02d}" for k in range(1, 51)]  # a partition of the 50 folders
        assert sum(labelled for _, labelled in fold["train"]) == 10
        assert all(labelled for _, labelled in fold["test"])
    ksdd2 = load_split("ksdd2", "53")
    assert len(ksdd2["train"]) == 2331 and len(ksdd2["test"]) == 1004
    assert sum(not labelled for _, labelled in ksdd2["train"]) == 246 - 53
    steel = load_split("severstal", "300_10")
    assert {k: len(v) for k, v in steel.items()} == {"train": 4443, "test": 2400, "validation": 1118}
    assert sum(not labelled for _, labelled in steel["train"]) == 290


def test_unknown_split_names_the_published_ones():
    with pytest.raises(DataError, match="unknown split '7_7'.*33_33"):
        load_split("ksdd", "7_7")


# --- KolektorSDD -------------------------------------------------------------------------


def test_ksdd_dummy_layout(tmp_path):
    root = make_ksdd(tmp_path / "ksdd")
    everything = read_ksdd(root, split="all")
    assert len(everything) == 399 and sum(s.is_defective for s in everything) == 52
    assert "kos21/Part7" not in {s.name for s in everything}
    for fold in range(3):
        samples = read_ksdd(root, split="33_33", fold=fold)
        assert {s.split for s in samples} == {"train", "test"}
        assert sum(s.split == "train" for s in samples) + sum(s.split == "test" for s in samples) == 399
        train_folders = {s.name.split("/")[0] for s in samples if s.split == "train"}
        test_folders = {s.name.split("/")[0] for s in samples if s.split == "test"}
        assert not train_folders & test_folders


def test_ksdd_weak_split_marks_positives_image_label_only(tmp_path):
    root = make_ksdd(tmp_path / "ksdd")
    samples = read_ksdd(root, split="33_0", fold=1)
    train_pos = [s for s in samples if s.split == "train" and s.is_defective]
    assert train_pos and not any(s.pixel_labelled for s in train_pos)
    assert all(s.pixel_labelled for s in samples if not s.is_defective or s.split == "test")
    mixed = read_ksdd(root, split="33_10", fold=1)
    labelled_folders = {n for n, ok in load_split("ksdd", "33_10")["folds"][1]["train"] if ok}
    for s in mixed:
        if s.split == "train" and s.is_defective:
            assert s.pixel_labelled == (s.name.split("/")[0] in labelled_folders)


def test_ksdd_missing_folder_and_bad_fold(tmp_path):
    root = make_ksdd(tmp_path / "ksdd")
    import shutil

    shutil.rmtree(root / "kos07")
    with pytest.raises(DataError, match=r"kos07: folder listed in split 33_33 fold \d"):
        read_ksdd(root, split="33_33", fold=0)
    with pytest.raises(DataError, match="fold 3 does not exist"):
        read_ksdd(root, split="33_33", fold=3)
    with pytest.raises(DataError, match="KolektorSDD folder not found"):
        read_ksdd(tmp_path / "nope")


def test_ksdd_real_data(ksdd_root):
    everything = read_ksdd(ksdd_root, split="all")
    assert len(everything) == 399
    assert sum(s.is_defective for s in everything) == 52
    per_fold = [Counter(s.split for s in read_ksdd(ksdd_root, "33_33", f)) for f in range(3)]
    assert [c["train"] + c["test"] for c in per_fold] == [399, 399, 399]
    test_names = [s.name for f in range(3) for s in read_ksdd(ksdd_root, "33_33", f) if s.split == "test"]
    assert sorted(test_names) == sorted(s.name for s in everything)  # each image tested exactly once


# --- KolektorSDD2 ------------------------------------------------------------------------


def test_ksdd2_dummy_layout(tmp_path):
    root, bad = make_ksdd2(tmp_path / "ksdd2", "16")
    samples = read_ksdd2(root, split="16")
    c = counts(samples)
    assert len(samples) == 2331 + 1004
    assert sum(v for (part, d, _), v in c.items() if d) == len(bad)
    assert c[("train", True, False)] == 246 - 16  # the list's image-label-only positives
    assert all(s.mask_path.name.endswith("_GT.png") for s in samples)
    assert len(read_ksdd2(root, split="all")) == 3335


def test_ksdd2_missing_mask(tmp_path):
    root = tmp_path / "k2"
    write(root / "train" / "10000.png", image(8, 8))
    (root / "test").mkdir()
    with pytest.raises(DataError, match="10000_GT.png: mask of 10000.png is missing"):
        read_ksdd2(root, split="all")


# --- DAGM --------------------------------------------------------------------------------


def test_dagm_dummy_layout(tmp_path):
    root, bad = make_dagm(tmp_path / "dagm", k=1, split="5")
    samples = read_dagm(root, split="5", fold=1)
    assert len(samples) == 1150
    assert {f"{s.split}/{s.image_path.name}" for s in samples if s.is_defective} == bad
    assert all((s.mask_path is None) == (not s.is_defective) for s in samples)
    weak = [s for s in samples if not s.pixel_labelled]
    assert weak and all(s.is_defective and s.split == "train" for s in weak)
    assert len(read_dagm(root, split="all")) == 1150
    with pytest.raises(DataError, match="DAGM class 2 folder not found"):
        read_dagm(root, split="5", fold=2)


def test_dagm_real_sample(dagm_sample_root):
    samples = read_dagm(dagm_sample_root, split="all")
    assert len(samples) == 15 and sum(s.is_defective for s in samples) == 9
    for s in samples:
        m = load_mask(s)
        assert m.shape == (512, 512) and (m.any() == s.is_defective)


# --- Severstal ---------------------------------------------------------------------------


@pytest.mark.parametrize("csv_format", ["new", "old"])
def test_severstal_dummy_layout_merges_classes(tmp_path, csv_format):
    root, expected = make_severstal(tmp_path / "steel", "300_10", csv_format)
    samples = read_severstal(root, split="300_10")
    assert Counter(s.split for s in samples) == {"train": 4443, "test": 2400, "validation": 1118}
    defective = {s.name: s for s in samples if s.is_defective}
    assert set(defective) == set(expected)
    for name, sample in list(defective.items())[:12]:
        np.testing.assert_array_equal(load_mask(sample), expected[name])
    assert len(read_severstal(root, split="all")) == 4443 + 2400 + 1118


def test_rle_round_trip_and_orientation():
    m = np.zeros((256, 1600), np.uint8)
    m[0, 0] = 1  # first pixel: start 1
    m[1, 0] = 1  # column-major: the next pixel down is the second pixel
    m[255, 1599] = 1
    assert rle_encode(m).split()[:2] == ["1", "2"]
    np.testing.assert_array_equal(rle_decode(rle_encode(m), (256, 1600)), m)


def test_severstal_rle_past_the_image(tmp_path):
    root = tmp_path / "steel"
    write(root / "train_images" / "abc.jpg", image(4, 4))
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nabc.jpg,1,409590 20\n")
    with pytest.raises(DataError, match=r"train.csv line 2 \(abc\): run-length encoding runs past the image"):
        read_severstal(root, split="all")


# --- folder ------------------------------------------------------------------------------


def test_folder_with_splits(tmp_path):
    root = make_folder(tmp_path / "mine")
    samples = read_folder(root)
    assert Counter((s.split, s.is_defective) for s in samples) == {("train", False): 3, ("train", True): 2, ("test", False): 3, ("test", True): 2}
    d0 = next(s for s in samples if s.name == "train/defective/traind0")
    d1 = next(s for s in samples if s.name == "train/defective/traind1")
    assert d0.mask_path.name == "traind0.png" and d0.pixel_labelled
    assert d1.mask_path is None and not d1.pixel_labelled  # image label only
    assert len(read_folder(root, split="test")) == 5


def test_folder_flat_and_csv(tmp_path):
    flat = make_folder(tmp_path / "flat", with_splits=False)
    samples = read_folder(flat)
    assert {s.split for s in samples} == {"all"} and sum(s.is_defective for s in samples) == 2
    root = tmp_path / "csv"
    write(root / "img" / "a.png", image())
    write(root / "img" / "b.png", image())
    write(root / "m" / "b_mask.png", mask())
    (root / "labels.csv").write_text("image,label,split,mask\nimg/a.png,good,train,\nimg/b.png,NG,test,m/b_mask.png\n")
    samples = read_folder(root)
    assert [(s.name, s.is_defective, s.split) for s in samples] == [("img/a", False, "train"), ("img/b", True, "test")]
    assert samples[1].mask_path == root / "m" / "b_mask.png"
    assert len(read_folder(root / "labels.csv")) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ("image,label\nimg/zz.png,good\n", r"line 2: image .*zz.png not found"),
        ("image,label\nimg/a.png,maybe\n", "line 2: label 'maybe' is not one of"),
        ("picture,label\n", "needs the columns image,label"),
    ],
)
def test_folder_csv_errors(tmp_path, content, message):
    write(tmp_path / "img" / "a.png", image())
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        read_folder(tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        read_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        read_folder(tmp_path / "empty")
    root = make_folder(tmp_path / "mine")
    with pytest.raises(DataError, match="split 'validation' is empty"):
        read_folder(root, split="validation")


# --- registry ----------------------------------------------------------------------------


def test_registry_reads_every_dataset(tmp_path):
    assert set(DATASETS) == {"ksdd", "ksdd2", "dagm", "severstal", "folder", "synthetic"}
    with pytest.raises(DataError, match="unknown dataset 'mvtec'"):
        read_dataset("mvtec", tmp_path)
    with pytest.raises(DataError, match="needs --data-root"):
        read_dataset("ksdd", None)
    root = make_ksdd(tmp_path / "ksdd")
    assert len(read_dataset("ksdd", root)) == 399  # default: split 33_33, fold 0


def test_synthetic_through_the_registry(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("DEFECTKIT_CACHE", str(tmp_path / "cache"))
    samples = read_dataset("synthetic", None)  # default root under $DEFECTKIT_CACHE
    assert Counter((s.split, s.is_defective) for s in samples) == {("train", False): 60, ("train", True): 20, ("test", False): 30, ("test", True): 30}
    assert all(s.pixel_labelled and s.mask_path.parent.name == "masks" for s in samples if s.is_defective)
    assert all(load_mask(s).any() for s in samples if s.is_defective)
    small = read_dataset("synthetic", tmp_path / "small")
    assert len(small) == 140 and str(small[0].image_path).startswith(str(tmp_path / "small"))
    code, out, _ = run_cli("datasets", "inspect", "--dataset", "synthetic")
    assert code == 0 and f"synthetic at {tmp_path / 'cache' / 'synthetic'}: 140 images, 50 defective" in out


# --- folder: masks matched by stem must belong to one image ------------------------------


@pytest.mark.parametrize(
    "images, mask_at",
    [
        (["defective/x.png", "defective/x.jpg"], "masks/x.png"),  # same stem, two suffixes
        (["defective/cam1/img.png", "defective/cam2/img.png"], "masks/img.png"),  # nested folders
        (["train/defective/x.png", "test/defective/x.png"], "masks/x.png"),  # two splits, one root mask
    ],
)
def test_folder_refuses_a_mask_two_images_match(tmp_path, images, mask_at):
    for i, name in enumerate(images):
        write(tmp_path / name, image(seed=i))
    write(tmp_path / mask_at, mask())
    with pytest.raises(DataError) as caught:
        read_folder(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / mask_at}: mask matched by file stem to both")
    assert all(str(tmp_path / name) in message for name in images)


def test_folder_masks_that_name_one_image_are_fine(tmp_path):
    # nested masks mirror the image folders; split masks folders win over masks/
    write(tmp_path / "train" / "defective" / "cam1" / "img.png", image(seed=1))
    write(tmp_path / "train" / "defective" / "cam2" / "img.png", image(seed=2))
    write(tmp_path / "masks" / "cam1" / "img.png", mask())
    write(tmp_path / "masks" / "cam2" / "img_mask.png", mask())
    write(tmp_path / "test" / "defective" / "x.png", image(seed=3))
    write(tmp_path / "train" / "defective" / "x.png", image(seed=4))
    write(tmp_path / "test" / "masks" / "x.png", mask())
    write(tmp_path / "train" / "masks" / "x.png", mask())
    by_name = {s.name: s.mask_path for s in read_folder(tmp_path)}
    assert by_name == {
        "train/defective/cam1/img": tmp_path / "masks" / "cam1" / "img.png",
        "train/defective/cam2/img": tmp_path / "masks" / "cam2" / "img_mask.png",
        "train/defective/x": tmp_path / "train" / "masks" / "x.png",
        "test/defective/x": tmp_path / "test" / "masks" / "x.png",
    }


def test_folder_csv_names_masks_explicitly(tmp_path):
    write(tmp_path / "a" / "x.png", image(seed=1))
    write(tmp_path / "b" / "x.png", image(seed=2))
    write(tmp_path / "masks" / "x.png", mask())
    write(tmp_path / "m" / "bx.png", mask())
    (tmp_path / "labels.csv").write_text("image,label,split,mask\na/x.png,defective,train,masks/x.png\nb/x.png,defective,test,m/bx.png\n")
    assert [s.mask_path for s in read_folder(tmp_path)] == [tmp_path / "masks" / "x.png", tmp_path / "m" / "bx.png"]
    (tmp_path / "labels.csv").write_text("image,label,split,mask\na/x.png,defective,train,\nb/x.png,defective,test,\n")
    with pytest.raises(DataError, match=r"masks/x.png: mask matched by file stem to both .*a/x.png and .*b/x.png; .*labels.csv"):
        read_folder(tmp_path)


def test_folder_refuses_two_masks_for_one_image(tmp_path):
    write(tmp_path / "defective" / "x.png", image())
    write(tmp_path / "masks" / "x.png", mask())
    write(tmp_path / "masks" / "x.bmp", mask())
    with pytest.raises(DataError, match=r"defective/x.png: matches 2 mask files \(.*x.bmp, .*x.png\)"):
        read_folder(tmp_path)
