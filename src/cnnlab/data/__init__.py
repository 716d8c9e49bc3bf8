"""The data layer: finding, reading, caching and splitting datasets."""

from cnnlab.data._resolve import (
    KNOWN_DATASETS,
    cache_dir,
    data_root,
    find_dataset,
    recording_datasets,
)
from cnnlab.data.arrays import ArrayDataset, channel_statistics, limit, split_validation
from cnnlab.data.images import CIFAR10_MEAN, CIFAR10_STD, load_image_folder, load_images

__all__ = [
    "KNOWN_DATASETS", "cache_dir", "data_root", "find_dataset", "recording_datasets",
    "ArrayDataset", "channel_statistics", "limit", "split_validation", "CIFAR10_MEAN",
    "CIFAR10_STD", "load_image_folder", "load_images",
]
