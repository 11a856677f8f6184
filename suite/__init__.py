"""bnsuite: BatchNorm-statistics strategies for teacher-student self-supervised learning.

The building blocks are importable without the runner::

    from suite.bn import convert_bn, MomentumBatchNorm2d, SplitBatchNorm2d
    from suite.eval import knn_classify
"""

__version__ = "0.1.0"
