"""What selection is asked for: the target, the constraints and the allocation (:class:`SelectOptions`),
and the model the target fractions refer to (:class:`Baseline`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..types import GroupId

NORMALIZERS = ("mean", "max", "l2", "none")
#: How the target is shared out among the groups (:mod:`filterprune.selection.allocation`).
ALLOCATIONS = ("global", "uniform", "cost", "sensitivity")


@dataclass(frozen=True)
class SelectOptions:
    """What to remove. Exactly one of ``ratio``, ``target_macs``, ``target_params``, ``target_latency``.

    Attributes:
        ratio: fraction of prunable channels to remove, in [0, 1).
        target_macs: fraction of MACs to remove, in [0, 1).
        target_params: fraction of parameters to remove, in [0, 1).
        target_latency: fraction of the latency to remove, in [0, 1), as ``select``'s ``latency``
            predicts (:mod:`filterprune.latency_target` measures and refines it).
        global_ranking: rank all channels together; ``False`` removes the same fraction per group
            (the same as ``allocation="uniform"``, kept for existing callers).
        normalize: per-group score normalisation before global ranking: mean, max, l2 or none.
        min_channels: every group keeps at least this many channels.
        round_to: kept channel counts are multiples of this (or the group's full width).
        max_ratio: at most this fraction of a group's baseline channels is removed.
        ignored_layers: fnmatch patterns of layer names whose groups are left whole.
        tolerance: how far (absolute) the achieved fraction may be from the request.
        allocation: how the target is shared among groups: global (one ranking of normalised
            scores), uniform (the same fraction of every group), cost (normalised score per unit of
            the target's cost saved) or sensitivity (equal predicted drop from measured per-group
            curves); see :mod:`filterprune.selection.allocation`.
        cost_of: what ``allocation="cost"`` charges a channel: ``"macs"`` or ``"params"``; ``None``
            charges the target's own quantity (channels for ``ratio``, so cost then ranks as global).
    """

    ratio: float | None = None
    target_macs: float | None = None
    target_params: float | None = None
    global_ranking: bool = True
    normalize: str = "mean"
    min_channels: int = 1
    round_to: int = 1
    max_ratio: float = 1.0
    ignored_layers: tuple[str, ...] = ()
    tolerance: float = 0.01
    allocation: str = "global"
    target_latency: float | None = None
    cost_of: str | None = None

    def __post_init__(self) -> None:
        given = {k: v for k, v in self.targets().items() if v is not None}
        if len(given) != 1:
            raise ValueError("give exactly one of ratio, target_macs, target_params, target_latency "
                             f"(got {sorted(given) or 'none'})")
        (name, value), = given.items()
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
        if self.normalize not in NORMALIZERS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZERS)}, got {self.normalize!r}")
        if int(self.min_channels) < 1 or int(self.round_to) < 1:
            raise ValueError("min_channels and round_to must be >= 1")
        if not 0.0 < self.max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be in (0, 1], got {self.max_ratio!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.cost_of not in (None, "macs", "params"):
            raise ValueError(f"cost_of must be macs, params or None, got {self.cost_of!r}")
        if not self.global_ranking and self.allocation not in ("global", "uniform"):
            raise ValueError(f"global_ranking=False means allocation='uniform'; it cannot be combined with "
                             f"allocation={self.allocation!r}")

    def targets(self) -> dict[str, float | None]:
        """The target fields by name (``None`` for those not given)."""
        return {"ratio": self.ratio, "target_macs": self.target_macs, "target_params": self.target_params,
                "target_latency": self.target_latency}

    @property
    def target(self) -> tuple[str, float]:
        """(name, value) of the one target given."""
        return next((k, v) for k, v in self.targets().items() if v is not None)

    @property
    def mode(self) -> str:
        """The allocation in effect: ``allocation``, or ``"uniform"`` when ``global_ranking`` is off."""
        return self.allocation if self.global_ranking else "uniform"


@dataclass(frozen=True)
class Baseline:
    """The model before pruning: targets are fractions of these."""

    macs: int
    params: int
    channels: dict[GroupId, int] = field(default_factory=dict)
