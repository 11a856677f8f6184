"""Datasets, two-view augmentation and loaders.

>>> from suite.data import build_data, DATASETS
>>> sorted(DATASETS)[:3]
['cifar10', 'cifar100', 'digits']

``build_data(name, root=..., image_size=..., aug=..., batch_size=..., device=...)`` checks the
dataset (raising :class:`DataError` with the expected layout and how to obtain it), loads it and
returns a :class:`DataBundle` with ``ssl_epoch(epoch)`` and ``eval_batches(split, batch_size)``.
"""

# the modules that register the datasets (suite.data.datasets.register_dataset), in the order
# DATASETS lists them
from suite.data import builtin, ondisk  # noqa: F401  (registration)
from suite.data.augment import AUGMENTATIONS, EvalTransform, TwoViewAugment, ViewSpec, view_specs
from suite.data.datasets import DATASETS, DatasetInfo, channel_stats, check_dataset, get_dataset
from suite.data.errors import DataError
from suite.data.loaders import DataBundle, build_data, ssl_sample_count

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DataBundle",
    "DataError",
    "DatasetInfo",
    "EvalTransform",
    "TwoViewAugment",
    "ViewSpec",
    "build_data",
    "channel_stats",
    "ssl_sample_count",
    "check_dataset",
    "get_dataset",
    "view_specs",
]
