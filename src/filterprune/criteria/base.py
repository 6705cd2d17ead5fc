"""The criterion contract: ``Criterion.score(ScoringContext) -> {group id: 1-D scores}``, and its registry.

A criterion reads the model (weights, and for data-driven ones gradients or activations on a few
batches) and returns one score per channel of every prunable group; higher means keep. It never
mutates the model: parameters, buffers, ``.grad`` and train/eval mode are as they were afterwards
(a test checks this for every registered criterion). Selection and surgery are separate steps.

>>> from filterprune.criteria import create_criterion, list_criteria
>>> "l1" in list_criteria()
True
>>> create_criterion("l1").requires_data
False
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FilterpruneError
from ..graph.groups import ChannelGroup
from ..registry import Registry
from ..types import GroupId, Scores

logger = logging.getLogger(__name__)

__all__ = [
    "CRITERIA",
    "Criterion",
    "ScoringContext",
    "ScoringError",
    "create_criterion",
    "list_criteria",
    "register_criterion",
]

Batch = tuple[Tensor, Tensor]


class ScoringError(FilterpruneError, ValueError):
    """A criterion cannot score this model or context (no data given, a group without BatchNorm...).

    It is a ``ValueError`` (bad user input) and a ``FilterpruneError`` (the CLI reports it in one line).
    """


@dataclass
class ScoringContext:
    """Everything a criterion may read. Criteria treat it, and the model in it, as read-only.

    Attributes:
        model: the network to score, already on ``device``.
        example_inputs: a batch the model accepts (a tensor, or a tuple of positional inputs).
        groups: the channel groups to score; only those with ``prunable=True`` get scores.
        data: an iterable of ``(x, y)`` batches for data-driven criteria; ``None`` for none.
        device: where data batches are moved; ``None`` means the device of the model's parameters.
        seed: seeds every random choice a criterion makes.
        num_batches: how many batches of ``data`` a data-driven criterion consumes (fewer if the
            iterable ends first).
        loss_fn: ``loss_fn(model(x), y) -> scalar`` for gradient-based criteria (cross-entropy).
    """

    model: nn.Module
    example_inputs: Tensor | tuple[Tensor, ...]
    groups: list[ChannelGroup]
    data: Iterable[Batch] | None = None
    device: torch.device | str | None = None
    seed: int = 0
    num_batches: int = 16
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy

    def __post_init__(self) -> None:
        if self.num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {self.num_batches}")
        ids = [g.id for g in self.groups]
        if len(ids) != len(set(ids)):
            raise ValueError("ScoringContext.groups has duplicate group ids")

    def prunable_groups(self) -> list[ChannelGroup]:
        """The groups a criterion must score, in ``groups`` order."""
        return [g for g in self.groups if g.prunable]

    def resolved_device(self) -> torch.device:
        """``device``, or the device of the model's first parameter (CPU for a parameter-free model)."""
        if self.device is not None:
            return torch.device(self.device)
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def batches(self) -> Iterator[Batch]:
        """Up to ``num_batches`` batches of ``data``, moved to the device.

        Raises:
            ScoringError: ``data`` is ``None``, or yields no batch.
        """
        if self.data is None:
            raise ScoringError("this criterion needs data: pass (x, y) batches as ScoringContext.data")
        device = self.resolved_device()
        n = 0
        for x, y in islice(self.data, self.num_batches):
            n += 1
            yield x.to(device), y.to(device)
        if n == 0:
            raise ScoringError("ScoringContext.data yielded no batch")


class Criterion(ABC):
    """Base class of every criterion: subclasses implement :meth:`compute`; callers use :meth:`score`.

    ``score`` enforces the contract around ``compute``: data present when ``requires_data``, then
    exactly one finite 1-D float CPU tensor of length ``group.size`` per prunable group.

    Attributes:
        name: the registry name (set by :func:`register_criterion`).
        requires_data: ``True`` if the criterion reads ``ctx.data``.
    """

    name: ClassVar[str] = ""
    requires_data: ClassVar[bool] = False

    def score(self, ctx: ScoringContext) -> Scores:
        """Score every prunable group of ``ctx``; higher means keep.

        Raises:
            ScoringError: data is required but ``ctx.data`` is ``None``, or the criterion does not
                apply to the model (e.g. ``bn`` on a group without BatchNorm).
            FilterpruneError: the criterion broke its contract (wrong length, NaN/inf).
        """
        if self.requires_data and ctx.data is None:
            raise ScoringError(f"criterion {self.name!r} needs data: pass (x, y) batches as ScoringContext.data")
        scores = self.compute(ctx)
        return _checked(self.name, ctx, scores)

    @abstractmethod
    def compute(self, ctx: ScoringContext) -> Scores:
        """Raw scores, one 1-D tensor per prunable group; :meth:`score` validates and normalises them."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _checked(name: str, ctx: ScoringContext, scores: Scores) -> Scores:
    expected = {g.id: g.size for g in ctx.prunable_groups()}
    if set(scores) != set(expected):
        missing, extra = sorted(set(expected) - set(scores)), sorted(set(scores) - set(expected))
        raise FilterpruneError(f"criterion {name!r} scored the wrong groups (missing {missing}, extra {extra})")
    out: dict[GroupId, Tensor] = {}
    for gid, size in expected.items():  # prunable-group order
        s = scores[gid].detach().to("cpu", torch.float32)
        if s.shape != (size,):
            raise FilterpruneError(f"criterion {name!r}: group {gid} has {size} channels, got scores {tuple(s.shape)}")
        if not torch.isfinite(s).all():
            raise FilterpruneError(f"criterion {name!r}: non-finite scores for group {gid}")
        out[gid] = s
    return out


CRITERIA: Registry[Criterion] = Registry("criterion")


def register_criterion(name: str) -> Callable[[type[Criterion]], type[Criterion]]:
    """Class decorator: register a :class:`Criterion` subclass under ``name`` and set its ``name``."""

    def decorator(cls: type[Criterion]) -> type[Criterion]:
        cls.name = name
        CRITERIA.register(name)(cls)
        return cls

    return decorator


def create_criterion(name: str, **kwargs: Any) -> Criterion:
    """Instantiate the criterion registered as ``name`` with its options.

    Raises:
        ValueError: ``name`` is not registered, or an option is invalid.
    """
    cls = CRITERIA.get(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"criterion {name!r}: {e}") from None
    return cls(**kwargs)


def list_criteria(pattern: str = "*") -> list[str]:
    """Registered criterion names matching an fnmatch ``pattern``, sorted."""
    return CRITERIA.names(pattern)
