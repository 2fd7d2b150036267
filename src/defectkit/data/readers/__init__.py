"""One reader per dataset layout; each returns a list of :class:`~defectkit.data.sample.Sample`."""

from .dagm import read_dagm
from .folder import read_folder
from .ksdd import read_ksdd
from .ksdd2 import read_ksdd2
from .severstal import read_severstal
from .synthetic import read_synthetic

__all__ = ["read_dagm", "read_folder", "read_ksdd", "read_ksdd2", "read_severstal", "read_synthetic"]
