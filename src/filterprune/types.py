"""Shared type aliases and the project's vocabulary.

Glossary (used everywhere in the code and docs):
    filter      an output channel of a conv layer.
    group       a set of coupled channels that must be removed together (a conv's filters, its BN,
                the consuming layers' input channels, everything tied by a residual add).
    score       a channel's importance; higher means keep.
    ratio       the fraction of channels *removed*.
    keep_idxs / prune_idxs   indices kept / removed; never a bare ``idxs``.
    MACs        multiply-accumulates; FLOPs = 2 x MACs. Papers often say "FLOPs" for MACs: we don't.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

GroupId = str  # qualified name of a group's root layer, e.g. "layer1.0.conv1"
Scores = dict[GroupId, Tensor]  # one 1-D tensor per group, one score per channel
PathLike = str | os.PathLike
# normalisation layers with one entry per channel (BatchNorm*, InstanceNorm*, SyncBatchNorm): they follow
# their producer's channels and carry per-channel parameters and running statistics
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
