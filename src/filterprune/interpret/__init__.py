"""Interpreting filters through compression (Abbasi-Asl & Yu, arXiv 1711.02329): per-filter CAR and
class-wise CAR, colour selectivity (:mod:`.colour`), the k-lowest statistic (:mod:`.study`), filter
pictures (:mod:`.figures`) and the ``filterprune explain`` workflow (:mod:`.workflow`)."""

from .colour import (
    activation_module,
    greyscale,
    kernel_colour_index,
    response_colour_index,
    top_response_colour_index,
)
from .study import LayerStudy, k_lowest_statistic, study_layer, subset_statistic

__all__ = ["LayerStudy", "activation_module", "greyscale", "k_lowest_statistic", "kernel_colour_index",
           "response_colour_index", "study_layer", "subset_statistic", "top_response_colour_index"]
