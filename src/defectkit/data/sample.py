"""The one record every reader returns: nothing downstream knows which dataset it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``pixel_labelled`` says whether the pixel mask may be used for training: true for good
    images (their mask is known to be empty) and for fully annotated defects, false for
    defects that may only be used with their image-level label (weak / mixed supervision).
    Evaluation always uses the mask when there is one.

    The mask comes either from a file (``mask_path``) or from run-length encodings
    (``mask_rle``, Severstal); a good image has neither and its mask is all zeros.
    """

    name: str
    image_path: Path
    is_defective: bool
    split: str = "train"
    mask_path: Path | None = None
    pixel_labelled: bool = True
    mask_rle: tuple[str, ...] = field(default=(), repr=False)
    mask_shape: tuple[int, int] | None = None  # (height, width) the RLE refers to

    @property
    def has_mask(self) -> bool:
        return self.mask_path is not None or bool(self.mask_rle)

    @property
    def label(self) -> int:
        return int(self.is_defective)
