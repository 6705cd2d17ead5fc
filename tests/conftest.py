"""Shared fixtures over the tiny topologies of :mod:`models_zoo`.

``tests/`` has no ``__init__.py``, so pytest (prepend import mode) puts this folder on ``sys.path`` and
test files anywhere below import ``models_zoo`` directly.
"""

from __future__ import annotations

import pytest
import torch

from models_zoo import PRUNABLE, build

# The suite's tensors are tiny. On a small shared CI box, torch's intra-op thread pool spends far
# more time synchronising than computing (measured: a 3x16x32x32 BatchNorm took 8 ms with 2 threads
# under load, 0.03 ms with 1), so tests run single-threaded.
torch.set_num_threads(1)


@pytest.fixture(params=PRUNABLE)
def tiny(request):
    """``(name, model, x)`` for each prunable tiny topology."""
    model, x = build(request.param)
    return request.param, model, x
