"""The data layer: one typed ``Dataset`` for every supported format, image loading, and dataset checks.

Public API: ``load_dataset(path)``, ``default_dataset_path()``, ``Dataset``/``ImageRecord``/``Caption``, and
``engine.data.images.load_rgb``. Importing this package stays light (no torch).
"""

from engine.data.detect import default_dataset_path, load_dataset, read_dataset
from engine.data.model import SPLITS, Caption, Dataset, ImageRecord

__all__ = ["SPLITS", "Caption", "Dataset", "ImageRecord", "default_dataset_path", "load_dataset", "read_dataset"]
