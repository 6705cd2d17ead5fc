"""Training-time methods: they change the training loop through hooks, not the scores.

C-SGD (Ding et al., arXiv 1904.03837): :func:`cluster_groups` picks the clusters,
:class:`CentripetalSGD` (a :class:`~filterprune.train.TrainHook`) trains each cluster to one point,
:func:`trim` keeps one channel per cluster and folds the rest into the consumers;
:func:`csgd_prune` and :func:`squeeze` chain them.
"""

from ._clusters import (
    CLUSTERINGS,
    Clusters,
    cluster_groups,
    even_clusters,
    kmeans_clusters,
    load_clusters,
    save_clusters,
    target_widths,
)
from ._slots import Deviation, clustered_params, deviation
from ._trim import TrimResult, check_shortcuts, fold, trim
from .csgd import CentripetalSGD, decay_matrix, merge_matrix, predicted_decay

__all__ = [
    "CLUSTERINGS",
    "CentripetalSGD",
    "Clusters",
    "Deviation",
    "TrimResult",
    "check_shortcuts",
    "cluster_groups",
    "clustered_params",
    "decay_matrix",
    "deviation",
    "even_clusters",
    "fold",
    "kmeans_clusters",
    "load_clusters",
    "merge_matrix",
    "predicted_decay",
    "save_clusters",
    "target_widths",
    "trim",
]
