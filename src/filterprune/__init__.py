"""filterprune: structured filter pruning for PyTorch CNNs.

The public API, re-exported here (timm style). Everything else is reachable through the subpackages.

>>> import torch, filterprune as fp
>>> model = fp.create_model("resnet20")
>>> macs, params = fp.count(model, torch.randn(1, 3, 32, 32))
>>> round(macs / 1e6, 2), params
(40.55, 269722)
"""

from importlib.metadata import PackageNotFoundError, version

from .api import load, prune, save, score
from .checkpoint import read_checkpoint, save_checkpoint
from .config import PruneConfig, PruneRunConfig, RunConfig, TrainConfig
from .criteria import create_criterion, list_criteria, register_criterion
from .data import ArrayDataset, BatchLoader, DataSplits, load_data
from .errors import CheckpointError, DataError, FilterpruneError, PruningError
from .export import export_onnx
from .graph import ChannelGroup, PrunePlan
from .graph.ops import LayerOp, register_layer_op
from .metrics import count, measure_latency
from .models import create_model, list_models, register_model
from .train import TrainHook, evaluate, fit

try:
    __version__ = version("filterprune")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "ArrayDataset", "BatchLoader", "ChannelGroup", "CheckpointError", "DataError", "DataSplits",
    "FilterpruneError", "LayerOp", "PruneConfig", "PruneRunConfig", "PrunePlan", "PruningError", "RunConfig",
    "TrainConfig", "TrainHook", "count", "create_criterion", "create_model", "evaluate", "fit",
    "list_criteria", "list_models", "load", "load_data", "measure_latency", "prune", "read_checkpoint",
    "register_criterion", "register_layer_op", "register_model", "save", "save_checkpoint", "score",
    "export_onnx",
]

# C-SGD (training-time method): cluster, centripetal training as a TrainHook, trim / squeeze
from .methods import CentripetalSGD  # noqa: E402
from .methods.csgd_run import CSGDOptions, CSGDResult, csgd, csgd_prune, squeeze  # noqa: E402

__all__ += ["CSGDOptions", "CSGDResult", "CentripetalSGD", "csgd", "csgd_prune", "squeeze"]

# BatchNorm re-calibration after pruning (train/bn_recalibrate.py); the progress-bar switch (utils/progress.py)
from .train.bn_recalibrate import recalibrate_bn  # noqa: E402
from .utils.progress import set_progress  # noqa: E402

__all__ += ["recalibrate_bn", "set_progress"]
