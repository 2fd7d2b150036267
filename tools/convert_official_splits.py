"""Convert the authors' split lists (gzipped JSON in ../shared/datasets/official_splits) into
the compact package data under src/defectkit/data/splits/.

One file per dataset. Identical name lists are stored once and referenced by key; the
per-sample flag is kept only where it carries information: the names of training positives
that may be used with their image label only (``weak``). Every other flag in the source is
true (all test samples, all negatives, all pixel-labelled positives) - the script checks it.

    python tools/convert_official_splits.py [SOURCE_DIR]
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent / "shared" / "datasets" / "official_splits"
TARGET = HERE.parent / "src" / "defectkit" / "data" / "splits"
DATASETS = {"KSDD": "ksdd", "KSDD2": "ksdd2", "DAGM": "dagm", "STEEL": "severstal"}


def _store(lists: dict[str, list], names: list) -> str:
    key = hashlib.sha1(json.dumps(names).encode()).hexdigest()[:10]
    lists.setdefault(key, names)
    return key


def _part(lists: dict, entries: list, part: str, where: str) -> dict:
    names = [e[0] for e in entries]
    weak = [e[0] for e in entries if not e[1]]
    if weak and part != "train":
        raise SystemExit(f"{where}/{part}: unexpected image-label-only entries outside train")
    out = {"names": _store(lists, names)}
    if weak:
        out["weak"] = _store(lists, weak)
    return out


def convert(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for folder, name in DATASETS.items():
        lists: dict[str, list] = {}
        splits: dict[str, object] = {}
        for path in sorted((source / folder).glob("split_*.json.gz")):
            key = path.name[len("split_") : -len(".json.gz")]
            data = json.loads(gzip.decompress(path.read_bytes()))
            if "folds" in data:
                splits[key] = {"folds": [{p: _part(lists, f[p], p, f"{path.name}#{i}") for p in f} for i, f in enumerate(data["folds"])]}
            elif "classes" in data:
                splits[key] = {"classes": [{p: _part(lists, c[p], p, f"{path.name}#{i}") for p in c} for i, c in enumerate(data["classes"])]}
            else:
                splits[key] = {p: _part(lists, data[p], p, path.name) for p in ("train", "test", "validation") if p in data}
        doc = {
            "format": 1,
            "dataset": name,
            "source": f"official split lists of the authors' reference code (splits/{folder}/*.pyb)",
            "splits": splits,
            "lists": lists,
        }
        raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        out = target / f"{name}.json.gz"
        out.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
        print(f"{out.relative_to(HERE.parent)}: {len(splits)} splits, {len(lists)} lists, {out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    convert(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE, TARGET)
