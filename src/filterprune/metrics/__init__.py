"""What a pruned model costs: MACs and parameters (:func:`count`), per layer (:func:`layer_table`), and
inference latency (:func:`measure_latency`, :func:`measure_side_by_side`; per layer and width:
:class:`LatencyTable`, :func:`measure_table`; the channel multiple that suits the device:
:func:`choose_round_to`). Every method in filterprune is reported with these."""

from .latency import measure_latency, measure_side_by_side
from .latency_table import LatencyTable, load_or_measure_table, measure_table
from .macs import LayerRow, count, count_params, layer_table, register_mac_rule
from .round_to import choose_round_to

__all__ = ["LatencyTable", "LayerRow", "choose_round_to", "count", "count_params", "layer_table",
           "load_or_measure_table", "measure_latency", "measure_side_by_side", "measure_table", "register_mac_rule"]
