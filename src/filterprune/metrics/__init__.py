"""What a pruned model costs: MACs and parameters (:func:`count`), per layer (:func:`layer_table`), and
inference latency (:func:`measure_latency`). Every method in filterprune is reported with these."""

from .latency import measure_latency
from .macs import LayerRow, count, count_params, layer_table, register_mac_rule

__all__ = ["LayerRow", "count", "count_params", "layer_table", "measure_latency", "register_mac_rule"]
