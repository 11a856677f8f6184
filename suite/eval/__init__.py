"""Evaluation of frozen encoders: cached features, weighted cosine kNN and the linear probe, on
cached features (``cached``) or on augmented images (``augmented``, :mod:`suite.eval.augmented`).

Example::

    from suite.eval import extract_features, knn_accuracy, linear_probe

    train_x, train_y = extract_features(encoder, train_batches)
    test_x, test_y = extract_features(encoder, test_batches)
    knn = knn_accuracy(train_x, train_y, test_x, test_y, k=200, temperature=0.1)
    probe = linear_probe(train_x, train_y, test_x, test_y, num_classes=10)
"""

from suite.eval.augmented import SCHEDULES, linear_probe_augmented
from suite.eval.features import extract_features, topk_accuracy, topk_correct, topk_hits
from suite.eval.knn import (
    DEFAULT_BLOCK_BYTES,
    knn_accuracy,
    knn_chunk_size,
    knn_classify,
    knn_scores,
)
from suite.eval.linear import NORMALIZATIONS, linear_probe
from suite.eval.placement import FeaturePlan, plan_features
from suite.eval.threads import cpu_threads, eval_threads

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "NORMALIZATIONS",
    "SCHEDULES",
    "FeaturePlan",
    "cpu_threads",
    "eval_threads",
    "extract_features",
    "knn_accuracy",
    "knn_chunk_size",
    "knn_classify",
    "knn_scores",
    "linear_probe",
    "linear_probe_augmented",
    "plan_features",
    "topk_accuracy",
    "topk_correct",
    "topk_hits",
]
