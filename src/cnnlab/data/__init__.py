"""The data layer: finding, reading, caching and splitting datasets."""

from cnnlab.data._resolve import cache_dir, data_root, find_dataset

__all__ = ["cache_dir", "data_root", "find_dataset"]
