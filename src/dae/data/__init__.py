"""Data layer: strict IDX files and datasets (MNIST, Fashion-MNIST, image folders); noise: dae.data.noise."""

from dae.data.datasets import (
    DATASETS,
    FolderDataset,
    ImageDataset,
    check_dataset,
    create_dataset,
    list_datasets,
    load_images,
)
from dae.data.idx import read_idx, write_idx

__all__ = [
    "DATASETS",
    "FolderDataset",
    "ImageDataset",
    "check_dataset",
    "create_dataset",
    "list_datasets",
    "load_images",
    "read_idx",
    "write_idx",
]
