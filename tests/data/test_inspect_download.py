from __future__ import annotations

import dataclasses
import json
import zipfile

import pytest
from layouts import make_ksdd, mask, write

from defectkit.data import datasets
from defectkit.data.download import download_dataset
from defectkit.errors import DataError


def test_inspect_ksdd_dummy_prints_counts_per_fold(tmp_path, run_cli):
    root = make_ksdd(tmp_path / "ksdd")
    code, out, _ = run_cli("datasets", "inspect", "--dataset", "ksdd", "--data-root", root)
    assert code == 0
    assert "399 images, 52 defective" in out
    assert "split 33_33" in out and out.count("fold 0") == 2 and out.count("fold 2") == 2
    assert "checked 399 images and their masks: all files ok" in out


def test_inspect_real_ksdd(ksdd_root, run_cli):
    code, out, _ = run_cli("datasets", "inspect", "--dataset", "ksdd", "--data-root", ksdd_root)
    assert code == 0
    assert "399 images, 52 defective (52 with pixel masks), 347 good" in out
    rows = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│ fold")]
    cells = [[c.strip() for c in r] for r in rows]
    assert [(c[0], c[1]) for c in cells] == [(f"fold {k}", p) for k in range(3) for p in ("train", "test")]
    assert sum(int(c[3]) for c in cells if c[1] == "test") == 52  # every defect is tested once
    assert sum(int(c[2]) for c in cells if c[1] == "test") == 399


def test_inspect_real_dagm_sample(dagm_sample_root, run_cli):
    code, out, _ = run_cli("datasets", "inspect", "--dataset", "dagm", "--data-root", dagm_sample_root, "--split", "all")
    assert code == 0 and "15 images, 9 defective" in out


def test_inspect_reports_broken_files(tmp_path, run_cli):
    root = make_ksdd(tmp_path / "ksdd")
    (root / "kos03" / "Part1.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    write(root / "kos04" / "Part3_label.bmp", mask(10, 10))  # wrong size, still defective
    code, out, _ = run_cli("datasets", "inspect", "--dataset", "ksdd", "--data-root", root, "--split", "all")
    assert code == 1
    assert "problems: 1 unreadable, 1 mask_size" in out and "2 problem(s)" in out
    code, out, _ = run_cli("datasets", "inspect", "--dataset", "ksdd", "--data-root", root, "--split", "all", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["problem_counts"] == {"unreadable": 1, "mask_size": 1}
    messages = {p["kind"]: p["message"] for p in report["problems"]}
    assert messages["unreadable"].startswith(f"{root / 'kos03' / 'Part1.jpg'}: unreadable image")
    assert messages["mask_size"] == f"{root / 'kos04' / 'Part3_label.bmp'}: mask is 10x10 but its image Part3.jpg is 16x24"


def test_cli_user_errors_are_one_line(tmp_path, run_cli):
    code, _, err = run_cli("datasets", "inspect", "--dataset", "ksdd", "--data-root", tmp_path / "nope")
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nope'}: KolektorSDD folder not found"
    code, _, err = run_cli("datasets", "inspect", "--dataset", "mvtec", "--data-root", tmp_path)
    assert code == 2 and "unknown dataset 'mvtec'" in err
    code, out, _ = run_cli("datasets", "list")
    assert code == 0 and "ksdd2" in out and "severstal" in out


def _zip_of_ksdd(tmp_path):
    root = make_ksdd(tmp_path / "src" / "KolektorSDD")
    archive = tmp_path / "KolektorSDD.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, path.relative_to(root.parent))
    return archive


def test_download_from_a_local_archive_and_url(tmp_path, run_cli):
    archive = _zip_of_ksdd(tmp_path)
    root = download_dataset("ksdd", tmp_path / "a", archive=archive)
    assert root == tmp_path / "a" / "KolektorSDD" and (root / "kos50" / "Part7.jpg").is_file()
    code, out, _ = run_cli("datasets", "download", "ksdd", "--out", tmp_path / "b", "--url", archive.as_uri())
    assert code == 0 and "ksdd is ready at" in out.replace("\n", "")
    assert (tmp_path / "b" / "KolektorSDD" / "kos01" / "Part0_label.bmp").is_file()


def test_download_checks_the_published_checksum(tmp_path, monkeypatch):
    archive = _zip_of_ksdd(tmp_path)
    spec = datasets.DATASETS["ksdd"]
    fake = dataclasses.replace(spec, download=dataclasses.replace(spec.download, url=archive.as_uri()))
    monkeypatch.setitem(datasets.DATASETS, "ksdd", fake)
    with pytest.raises(DataError, match="SHA-256 differs from the published checksum"):
        download_dataset("ksdd", tmp_path / "c")


def test_download_errors(tmp_path):
    with pytest.raises(DataError, match="has no public download address: kaggle competitions download"):
        download_dataset("severstal", tmp_path)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="bad.zip: not a zip or tar archive"):
        download_dataset("ksdd", tmp_path / "d", archive=bad)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(DataError, match="did not contain a KolektorSDD"):
        download_dataset("ksdd", tmp_path / "e", archive=empty)
    with pytest.raises(DataError, match="download failed"):
        download_dataset("ksdd", tmp_path / "f", url=(tmp_path / "missing.zip").as_uri())
