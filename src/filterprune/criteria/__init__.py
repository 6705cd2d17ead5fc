"""Channel-importance criteria: ``create_criterion("l1").score(ctx) -> {group id: scores}``.

Registered: ``l1``, ``l2`` (filter norms, Li et al. 2017), ``bn`` (|gamma|, network slimming),
``taylor`` (first-order group Taylor, Molchanov et al. 2019; needs data), ``pls-vip`` (PLS+VIP,
Jordao et al. 2019; needs data), ``car`` / ``car-classwise`` (accuracy reduction per removed filter,
Abbasi-Asl & Yu 2017; needs data) and ``random``. Higher scores mean keep. Importing this package
registers them; nothing else happens at import.
"""

from . import bn_scale, car, magnitude, pls_vip, random_score, taylor  # noqa: F401  (registration)
from .base import (
    CRITERIA,
    Criterion,
    ScoringContext,
    ScoringError,
    create_criterion,
    list_criteria,
    register_criterion,
)

__all__ = [
    "CRITERIA",
    "Criterion",
    "ScoringContext",
    "ScoringError",
    "create_criterion",
    "list_criteria",
    "register_criterion",
]
