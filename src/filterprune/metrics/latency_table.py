"""A per-group latency table measured on one device and batch size (NetAdapt-style).

Source: Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation for Mobile Applications",
ECCV 2018, Sec. 3.3 ("Fast Resource Consumption Estimation"): latency is not proportional to MACs, so
layers are timed on the target platform at a grid of channel counts, and a network's latency is
predicted as the measured total minus what the tables say is saved.

What is timed. For each prunable group and each width ``c`` of a grid (``grid_points`` widths evenly
up to the group's size), a copy of the model with *only that group* narrowed to ``c`` channels runs
``repeats`` forwards on the example batch, and forward hooks time every layer the group touches (its
convs, BatchNorms, Linear inputs) inside the real network (caches, memory layout and kernel choice as
in use: at batch 1 a conv timed alone can be several times faster than in the network). A grid point
is the median over the forwards. The full-width model is timed the same way (per layer and whole) in
rounds between the groups, so that the base sees the same machine load; the base total ``T`` and
each layer's full time ``t_l`` are medians over those rounds.

Per layer ``l`` this gives ``r_l,in(i) = t_l(i, full) / t_l`` and ``r_l,out(o) = t_l(full, o) / t_l``
(1 where the layer's input/output is not in a prunable group), each linear between grid points,
equal to the smallest grid point's value below it, and made monotone (a narrower layer is never
predicted slower: each value is the minimum over the wider grid points, which removes timing noise).
A layer whose input and output both shrink is predicted by the separable product (exact for the
MACs term of a conv, ``in x out``)::

    t_l(i, o) = t_l * r_l,in(i) * r_l,out(o)
    saved     = sum_l [ t_l - t_l(i_l, o_l) ]
    latency   = T - saved                      (rest="fixed": untimed ops keep their time; NetAdapt)
              = T - saved * T / S              (rest="scaled", default: ops the hooks do not see,
                                                activations, adds, pooling, run on the same channels
                                                and shrink with them; S = sum_l t_l)
    reduction = 1 - latency / T
"""

from __future__ import annotations

import bisect
import copy
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..graph.groups import ChannelGroup, PrunePlan
from ..graph.surgery import apply_plan
from ..types import NORM_LAYERS, PathLike
from ..utils.io import atomic_write_json
from ..utils.modes import evaluating

logger = logging.getLogger(__name__)

__all__ = ["TABLE_VERSION", "LatencyTable", "Profiler", "Timer", "interp1", "load_or_measure_table",
           "measure_table", "median_time", "module_widths", "perf_timer", "profile_layers"]

TABLE_VERSION = 2
#: ``timer(module, x) -> seconds`` of one forward (a mock in tests; :func:`perf_timer` otherwise)
Timer = Callable[[nn.Module, Tensor], float]
#: ``profiler(model, x, names) -> ({name: seconds}, total seconds)`` of one forward, per layer and whole
Profiler = Callable[[nn.Module, Tensor, Sequence[str]], tuple[dict[str, float], float]]
TABLED = (nn.modules.conv._ConvNd, nn.Linear, *NORM_LAYERS)


def perf_timer(module: nn.Module, x: Tensor) -> float:
    """Seconds of one ``module(x)``: ``time.perf_counter`` on CPU, CUDA events plus a synchronize on CUDA."""
    if x.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        module(x)
        end.record()
        torch.cuda.synchronize(x.device)
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    module(x)
    return time.perf_counter() - t0


def median_time(module: nn.Module, x: Tensor, *, warmup: int, repeats: int, timer: Timer | None = None) -> float:
    """Median seconds of ``repeats`` timed forwards after ``warmup`` untimed ones, under ``inference_mode``."""
    timer = timer or perf_timer
    with evaluating(module), torch.inference_mode():
        for _ in range(warmup):
            module(x)
        return statistics.median(timer(module, x) for _ in range(max(1, repeats)))


def interp1(grid: list[int], values: list[float], w: float) -> float:
    """Piecewise-linear ``values`` over ascending ``grid`` at ``w``; below ``grid[0]``: ``values[0]``.

    Raises:
        ValueError: ``w`` above the last grid point (wider than measured).

    >>> interp1([4, 8], [1.0, 3.0], 6)
    2.0
    >>> interp1([4, 8], [1.0, 3.0], 2)
    1.0
    """
    if w > grid[-1] + 1e-9:
        raise ValueError(f"width {w} is above the measured range (<= {grid[-1]})")
    if w <= grid[0]:
        return float(values[0])
    j = bisect.bisect_left(grid, w)
    if grid[j] == w:
        return float(values[j])
    g0, g1 = grid[j - 1], grid[j]
    a = (w - g0) / (g1 - g0)
    return float(values[j - 1] * (1 - a) + values[j] * a)


def _monotone(values: list[float]) -> list[float]:
    """Each value becomes the minimum over the grid points at least as wide (ascending grid).

    >>> _monotone([3.0, 2.0, 4.0])
    [2.0, 2.0, 4.0]
    """
    return [min(values[j:]) for j in range(len(values))]


def _layer_inputs(model: nn.Module, x: Tensor) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """Conv, Linear and BatchNorm layers with the shape of their (first) input in one forward."""
    found: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
    kinds = TABLED

    def hook(name):
        def record(mod, inputs, _out):
            if name not in found and inputs and isinstance(inputs[0], Tensor):
                found[name] = (mod, tuple(inputs[0].shape))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with evaluating(model), torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def _shape_of(m: nn.Module) -> tuple[str, int, int]:
    """(kind, full in, full out) of a layer for the table."""
    if isinstance(m, nn.Linear):
        return "2d", m.in_features, m.out_features
    if isinstance(m, nn.modules.conv._ConvNd):
        if m.transposed or (m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)):
            return "fixed", m.in_channels, m.out_channels
        return ("1d" if m.groups > 1 else "2d"), m.in_channels, m.out_channels
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "1d", m.num_features, m.num_features
    return "fixed", getattr(m, "num_features", 0), getattr(m, "num_features", 0)


def _rebuilt(m: nn.Module, c_in: int, c_out: int) -> nn.Module:
    """A fresh layer like ``m`` with ``c_in`` inputs and ``c_out`` outputs (random weights, eval mode)."""
    if isinstance(m, nn.Linear):
        return nn.Linear(c_in, c_out, bias=m.bias is not None)
    if isinstance(m, nn.modules.conv._ConvNd):
        groups = c_out if m.groups > 1 else 1
        return type(m)(c_in if groups == 1 else c_out, c_out, m.kernel_size, stride=m.stride, padding=m.padding,
                       dilation=m.dilation, groups=groups, bias=m.bias is not None, padding_mode=m.padding_mode)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return type(m)(c_out, affine=m.affine, track_running_stats=m.track_running_stats)
    return copy.deepcopy(m)




def profile_layers(model: nn.Module, x: Tensor, names: Sequence[str]) -> tuple[dict[str, float], float]:
    """One forward of ``model(x)``: seconds spent in each named layer (forward pre-/post-hooks around
    it, inside the running network) and in the whole forward. On CUDA every hook synchronizes."""
    mods = dict(model.named_modules())
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    started: dict[str, float] = {}
    spent: dict[str, float] = dict.fromkeys(names, 0.0)

    def pre(name):
        def hook(_m, _inputs):
            sync()
            started[name] = time.perf_counter()
        return hook

    def post(name):
        def hook(_m, _inputs, _out):
            sync()
            spent[name] += time.perf_counter() - started[name]
        return hook

    handles = [h for n in names for h in (mods[n].register_forward_pre_hook(pre(n)),
                                          mods[n].register_forward_hook(post(n)))]
    try:
        sync()
        t0 = time.perf_counter()
        model(x)
        sync()
        total = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    return spent, total


def _median_profile(model: nn.Module, x: Tensor, names: Sequence[str], warmup: int, repeats: int,
                    profiler: Profiler | None) -> tuple[dict[str, float], float]:
    profiler = profiler or profile_layers
    with evaluating(model), torch.inference_mode():
        for _ in range(warmup):
            model(x)
        runs = [profiler(model, x, names) for _ in range(max(1, repeats))]
    return ({n: statistics.median(r[0][n] for r in runs) for n in names},
            statistics.median(r[1] for r in runs))


@dataclass
class LatencyTable:
    """Per-layer latency of one model on one device and batch size as functions of the widths its
    prunable groups give it, plus the measured total (module docstring).

    Attributes:
        meta: device, batch_size, sample_shape, dtype, threads, torch version, warm-up, repeats,
            grid_points, rest.
        base_seconds: ``T``, the whole model's median forward time at full width.
        layers: per layer name: ``seconds`` (``t_l`` at full width), ``in``/``out`` (full widths), and
            where a prunable group sets them ``in_grid``/``in_seconds``, ``out_grid``/``out_seconds``
            (widths in the layer's own units, ascending, and the layer's seconds there, monotone).
        groups: per group id: ``grid`` (channel counts) and ``seconds`` (the summed time of the layers
            it touches, measured with that group alone at each width): the group's table.
    """

    meta: dict[str, Any]
    base_seconds: float
    layers: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, list]]

    def _ratio(self, info: Mapping[str, Any], axis: str, width: int) -> float:
        grid = info.get(f"{axis}_grid")
        if not grid or width >= info[axis]:
            return 1.0
        return interp1(grid, info[f"{axis}_seconds"], width) / max(info["seconds"], 1e-15)

    def layer_seconds(self, name: str, c_in: int | None = None, c_out: int | None = None) -> float:
        """Seconds of layer ``name`` with ``c_in`` inputs and ``c_out`` outputs (``None``: full):
        ``t_l * r_in(c_in) * r_out(c_out)``."""
        info = self.layers[name]
        r = self._ratio(info, "in", info["in"] if c_in is None else c_in)
        return info["seconds"] * r * self._ratio(info, "out", info["out"] if c_out is None else c_out)

    def layers_seconds(self) -> float:
        """``S``: the tabled layers' summed time at full width."""
        return sum(info["seconds"] for info in self.layers.values())

    def saved_seconds(self, widths: Mapping[str, tuple[int, int]]) -> float:
        """Seconds the table predicts are saved with layers at ``widths`` (``{name: (in, out)}``; others
        full), including the untimed ops' share under ``meta["rest"]`` (module docstring)."""
        saved = sum(self.layer_seconds(n) - self.layer_seconds(n, ci, co) for n, (ci, co) in widths.items()
                    if n in self.layers)
        if self.meta.get("rest", "scaled") == "scaled":
            saved *= self.base_seconds / max(self.layers_seconds(), 1e-15)
        return saved

    def predict_seconds(self, widths: Mapping[str, tuple[int, int]]) -> float:
        """Predicted forward time: ``base_seconds`` minus :meth:`saved_seconds`."""
        return self.base_seconds - self.saved_seconds(widths)

    def reduction(self, widths: Mapping[str, tuple[int, int]]) -> float:
        """Predicted fraction of the base latency removed at ``widths``."""
        return self.saved_seconds(widths) / max(self.base_seconds, 1e-15)

    def group_saving(self, group: ChannelGroup, n_removed: int) -> float:
        """Seconds saved by removing ``n_removed`` channels of ``group`` alone (the other groups full):
        each member layer loses ``n_removed`` x its indices per channel (``H*W`` for a Linear after a
        flatten), from its full width in the table."""
        widths: dict[str, list[int]] = {}
        for m in group.members:
            if m.module not in self.layers:
                continue
            info = self.layers[m.module]
            per = len(m.idxs[0]) if m.idxs else 1
            w = widths.setdefault(m.module, [info["in"], info["out"]])
            w[0 if m.kind == "in" else 1] -= per * n_removed
        return self.saved_seconds({k: (a, b) for k, (a, b) in widths.items()})

    def cost_fn(self) -> Callable[[ChannelGroup, int], float]:
        """``cost_fn(group, n_removed) -> seconds saved`` (:meth:`group_saving`), for ``allocation="cost"``."""
        return self.group_saving

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the ``latency_table.json`` layout)."""
        return {"version": TABLE_VERSION, "meta": self.meta, "base_seconds": self.base_seconds,
                "layers": self.layers, "groups": self.groups}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyTable:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: another version or a malformed table.
        """
        if not isinstance(d, Mapping) or d.get("version") != TABLE_VERSION:
            raise ValueError(f"not a version-{TABLE_VERSION} latency table")
        try:
            table = cls(dict(d["meta"]), float(d["base_seconds"]), dict(d["layers"]), dict(d["groups"]))
            for info in table.layers.values():
                float(info["seconds"]), int(info["in"]), int(info["out"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed latency table: {e!r}") from None
        return table

    def save(self, path: PathLike) -> Path:
        """Write the table as JSON (atomically)."""
        return atomic_write_json(path, self.to_dict())


def _sample_meta(x: Tensor) -> dict[str, Any]:
    return {"device": str(x.device), "batch_size": int(x.shape[0]), "sample_shape": list(x.shape[1:]),
            "dtype": str(x.dtype), "threads": torch.get_num_threads(), "torch": torch.__version__}


def _grid(size: int, points: int) -> list[int]:
    """``points`` channel counts evenly spread over (0, size), at least 1, distinct, full width excluded."""
    return sorted({max(1, round(size * k / points)) for k in range(1, points)} - {size})


def measure_table(model: nn.Module, example_inputs: Tensor, groups: Sequence[ChannelGroup], *,
                  grid_points: int = 6, warmup: int = 2, repeats: int = 7, rest: str = "scaled",
                  profiler: Profiler | None = None) -> LatencyTable:
    """Measure the latency table of ``model`` on ``example_inputs``' device and batch (module docstring).

    Args:
        model: the network at the widths the table starts from; not modified (copies are narrowed).
        example_inputs: a batch; its device, dtype and batch size are the ones measured.
        groups: the model's channel groups (``trace_groups``); prunable ones get curves.
        grid_points: a group of ``C`` channels is timed at ``round(C*k/grid_points)``, k = 1..grid_points-1.
        warmup: untimed forwards before each timed configuration.
        repeats: timed forwards per configuration (medians kept).
        rest: how untimed ops are predicted: ``"scaled"`` or ``"fixed"`` (module docstring).
        profiler: ``profiler(model, x, names) -> (per-layer seconds, total seconds)`` of one forward
            (default :func:`profile_layers`; a mock in tests).

    Raises:
        ValueError: ``grid_points`` < 2, ``repeats`` < 1, ``warmup`` < 0 or an unknown ``rest``.
    """
    if rest not in ("scaled", "fixed"):
        raise ValueError(f"rest must be 'scaled' or 'fixed', got {rest!r}")
    if grid_points < 2 or repeats < 1 or warmup < 0:
        raise ValueError(f"need grid_points >= 2, repeats >= 1, warmup >= 0 (got {grid_points}, {repeats}, {warmup})")
    mods = dict(model.named_modules())
    names = [n for n, m in mods.items() if isinstance(m, TABLED)]
    full = {n: _shape_of(mods[n])[1:] for n in names}
    base_layers: list[dict[str, float]] = []
    base_totals: list[float] = []

    def time_base() -> None:
        per, total = _median_profile(model, example_inputs, names, warmup, repeats, profiler)
        base_layers.append(per)
        base_totals.append(total)

    time_base()
    curves: dict[tuple[str, str], dict[int, float]] = {}
    group_rows: dict[str, dict[str, list]] = {}
    for g in groups:
        if not g.prunable or g.size < 2:
            continue
        touched: dict[tuple[str, str], int] = {}
        for m in g.members:
            if m.module in full:
                touched[(m.module, m.kind)] = len(m.idxs[0]) if m.idxs else 1
        kinds = {}
        for (n, kind) in touched:  # a layer that follows the group on both sides (depthwise) has one curve
            kinds[n] = "out" if (n, "out") in touched else kind
        row = {"grid": [], "seconds": []}
        for c in _grid(g.size, grid_points):
            narrowed = apply_plan(copy.deepcopy(model), [g], PrunePlan({g.id: list(range(c, g.size))}))
            per, _ = _median_profile(narrowed, example_inputs, list(kinds), warmup, repeats, profiler)
            for n, kind in kinds.items():
                width = full[n][0 if kind == "in" else 1] - touched[(n, kind)] * (g.size - c)
                curves.setdefault((n, kind), {})[width] = per[n]
            row["grid"].append(c)
            row["seconds"].append(sum(per.values()))
        group_rows[g.id] = row
        time_base()
    t_full = {n: statistics.median(b[n] for b in base_layers) for n in names}
    for gid, row in group_rows.items():
        g = next(x for x in groups if x.id == gid)
        members = {m.module for m in g.members if m.module in full}
        row["grid"].append(g.size)
        row["seconds"].append(sum(t_full[n] for n in members))
    layers: dict[str, dict[str, Any]] = {}
    for n in names:
        info: dict[str, Any] = {"seconds": t_full[n], "in": full[n][0], "out": full[n][1]}
        for kind in ("in", "out"):
            pts = curves.get((n, kind))
            if pts:
                grid = sorted(pts)
                values = _monotone([pts[w] for w in grid] + [t_full[n]])[:-1]
                info[f"{kind}_grid"], info[f"{kind}_seconds"] = grid + [full[n][0 if kind == "in" else 1]], \
                    values + [t_full[n]]
        layers[n] = info
    meta = {**_sample_meta(example_inputs), "warmup": warmup, "repeats": repeats, "grid_points": grid_points,
            "rest": rest}
    base = statistics.median(base_totals)
    logger.info("latency table: %d layers, %d groups, base %.3f ms (tabled layers %.3f ms)", len(layers),
                len(group_rows), base * 1e3, sum(t_full.values()) * 1e3)
    return LatencyTable(meta, base, layers, group_rows)


def _mismatch(table: LatencyTable, model: nn.Module, x: Tensor, want: Mapping[str, Any]) -> str:
    """Why ``table`` does not describe ``model`` on ``x`` with the settings ``want`` (empty when it does)."""
    now = {**_sample_meta(x), **want}
    for k in ("device", "batch_size", "sample_shape", "dtype", "threads", *want):
        if table.meta.get(k) != now[k]:
            return f"{k} {table.meta.get(k)!r} != {now[k]!r}"
    widths = module_widths(model, [n for n, m in model.named_modules() if isinstance(m, TABLED)])
    if set(widths) != set(table.layers):
        return "other layers"
    for n, (ci, co) in widths.items():
        if ci > table.layers[n]["in"] or co > table.layers[n]["out"]:
            return f"layer {n} is wider than measured"
    return ""


#: a cached table is measured again when the model's forward now takes more than this factor longer or
#: shorter than the table predicts for its current widths (the machine's load or clocks changed)
DRIFT = 1.5


def _drift(table: LatencyTable, model: nn.Module, x: Tensor, profiler: Profiler | None) -> str:
    """Why ``table``'s timings no longer hold on this machine (empty when they do): the model's median
    forward time now against the table's prediction for its current widths, within :data:`DRIFT`."""
    names = list(table.layers)
    _, now = _median_profile(model, x, names, table.meta.get("warmup", 2), table.meta.get("repeats", 7), profiler)
    then = table.predict_seconds(module_widths(model, names))
    if then / DRIFT <= now <= then * DRIFT:
        return ""
    return (f"timings drifted: a forward now takes {now * 1e3:.3g} ms where the table predicts {then * 1e3:.3g} ms "
            "(measured under another load)")


def load_or_measure_table(path: PathLike | None, model: nn.Module, example_inputs: Tensor,
                          groups: Sequence[ChannelGroup], *, owned: bool = False,
                          **measure_kwargs: Any) -> tuple[LatencyTable, bool]:
    """The table at ``path`` if it describes ``model`` on ``example_inputs`` and its timings still hold
    (the model's forward measured now within :data:`DRIFT` of the table's prediction), else a new
    measurement (written to ``path`` when given). Returns ``(table, reused)``.

    Args:
        path: the cache file (a run folder's ``latency_table.json``) or ``None``.
        model: the model the table must describe (its current widths may be narrower than measured).
        example_inputs: the batch (device, batch size) the table must be for.
        groups: the model's channel groups (for a new measurement).
        owned: ``path`` belongs to this run: a stale table there is replaced. Otherwise a file that
            does not match is refused, not overwritten.
        measure_kwargs: passed to :func:`measure_table`; ``grid_points``, ``rest``, ``repeats`` and
            ``warmup`` must also match a cached table.

    Raises:
        ValueError: ``path`` holds something else (not owned): the message names it and what to do.
    """
    want = {"grid_points": 6, "rest": "scaled", "repeats": 7, "warmup": 2}
    want.update({k: v for k, v in measure_kwargs.items() if k in want})
    p = Path(path) if path is not None else None
    if p is not None and p.exists():
        try:
            table = LatencyTable.from_dict(json.loads(p.read_text()))
            why = _mismatch(table, model, example_inputs, want) or _drift(
                table, model, example_inputs, measure_kwargs.get("profiler"))
        except (ValueError, OSError) as e:  # JSONDecodeError is a ValueError
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not why:
            logger.info("latency table reused from %s", p)
            return table, True
        if not owned:
            raise ValueError(f"{p} is not a latency table for this model and input ({why}): give another path "
                             "or remove it")
        logger.info("latency table %s does not fit (%s): measuring again", p, why)
    table = measure_table(model, example_inputs, groups, **measure_kwargs)
    if p is not None:
        table.save(p)
    return table, False


def module_widths(model: nn.Module, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """``{name: (in, out)}`` of the named layers as the model is now (table widths)."""
    mods = dict(model.named_modules())
    return {n: _shape_of(mods[n])[1:] for n in names if n in mods}
