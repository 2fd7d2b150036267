"""The dataset registry: one entry per supported layout, with its splits and where to get it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DataError
from . import readers
from .sample import Sample


@dataclass(frozen=True)
class Download:
    url: str
    file_name: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    read: Callable[..., list[Sample]]
    layout: str
    default_split: str | None = None  # None: no official split lists
    folds: tuple[int, ...] = ()  # fold ids of the protocol (DAGM: class numbers)
    fold_name: str = "fold"
    folds_on_disk: Callable[[Path], tuple[int, ...]] | None = None  # folds a partial copy holds
    download: Download | None = None
    how_to_get: str = ""
    default_root: Callable[[], Path] | None = None  # where it lives when no --data-root is given

    @property
    def has_official_splits(self) -> bool:
        return self.default_split is not None


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="ksdd",
            title="KolektorSDD (Tabernik et al. 2019)",
            read=readers.read_ksdd,
            layout="kosNN/PartM.jpg + kosNN/PartM_label.bmp",
            default_split="33_33",
            folds=(0, 1, 2),
            download=Download(
                url="https://go.vicos.si/kolektorsdd",
                file_name="KolektorSDD.zip",
                sha256="65dc621693418585de9c4467d1340ea7958a6181816f0dc2883a1e8b61f9d4dc",
            ),
            how_to_get="https://www.vicos.si/resources/kolektorsdd/ (CC BY-NC-SA 4.0)",
        ),
        DatasetSpec(
            name="ksdd2",
            title="KolektorSDD2 (Bozic et al. 2021)",
            read=readers.read_ksdd2,
            layout="{train,test}/{id}.png + {id}_GT.png",
            default_split="246",
            download=Download(url="https://go.vicos.si/kolektorsdd2", file_name="KolektorSDD2.zip", size=853_126_555),
            how_to_get="https://www.vicos.si/resources/kolektorsdd2/ (CC BY-NC-SA 4.0)",
        ),
        DatasetSpec(
            name="dagm",
            title="DAGM 2007 (weakly supervised industrial optical inspection)",
            read=readers.read_dagm,
            layout="ClassK/{Train,Test}/NNNN.PNG + Label/NNNN_label.PNG",
            default_split="1000",
            folds=tuple(range(1, 11)),
            fold_name="class",
            folds_on_disk=lambda root: tuple(k for k in range(1, 11) if (Path(root) / f"Class{k}").is_dir()),
            how_to_get="request it from the DAGM 2007 competition page (Heidelberg Collaboratory for Image "
            "Processing), extract it and pass the folder holding Class1..Class10",
        ),
        DatasetSpec(
            name="severstal",
            title="Severstal steel defect detection (Kaggle 2019)",
            read=readers.read_severstal,
            layout="train_images/{id}.jpg + train.csv (run-length encoded masks)",
            default_split="3000_3000",
            how_to_get="kaggle competitions download -c severstal-steel-defect-detection (needs a Kaggle account "
            "that accepted the competition rules), then unzip it into one folder",
        ),
        DatasetSpec(
            name="folder",
            title="Your own images (good/ and defective/ folders, optional masks/ and labels.csv)",
            read=readers.read_folder,
            layout="[train|test/]{good,defective}/*.png, masks/<stem>.png, or labels.csv",
        ),
        DatasetSpec(
            name="synthetic",
            title="Built-in synthetic DAGM-like textures with procedural defects",
            read=readers.read_synthetic,
            layout="generated in the folder layout",
            default_root=readers.synthetic.default_root,
        ),
    )
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise DataError(f"unknown dataset '{name}'; available: {', '.join(DATASETS)}") from None


def resolve_root(spec: DatasetSpec, root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    if spec.default_root is None:
        raise DataError(f"dataset '{spec.name}' needs --data-root (the folder that holds it)")
    return spec.default_root()


def read_dataset(name: str, root: str | Path | None, split: str | None = None, fold: int | None = None) -> list[Sample]:
    """Samples of a dataset; ``split``/``fold`` default to the dataset's protocol defaults."""
    spec = get_dataset(name)
    root = resolve_root(spec, root)
    kwargs = {}
    if split is not None:
        kwargs["split"] = split
    if fold is not None:
        kwargs["fold"] = fold
    return spec.read(root, **kwargs)
