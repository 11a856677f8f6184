"""Evaluation of frozen encoders: cached features, weighted cosine kNN and the linear probe.

Example::

    from suite.eval import extract_features, knn_accuracy, linear_probe

    train_x, train_y = extract_features(encoder, train_batches)
    test_x, test_y = extract_features(encoder, test_batches)
    knn = knn_accuracy(train_x, train_y, test_x, test_y, k=200, temperature=0.1)
    probe = linear_probe(train_x, train_y, test_x, test_y, num_classes=10)
"""

from suite.eval.features import extract_features, topk_accuracy, topk_correct
from suite.eval.knn import (
    DEFAULT_BLOCK_BYTES,
    knn_accuracy,
    knn_chunk_size,
    knn_classify,
    knn_scores,
)
from suite.eval.linear import NORMALIZATIONS, linear_probe

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "NORMALIZATIONS",
    "extract_features",
    "knn_accuracy",
    "knn_chunk_size",
    "knn_classify",
    "knn_scores",
    "linear_probe",
    "topk_accuracy",
    "topk_correct",
]
