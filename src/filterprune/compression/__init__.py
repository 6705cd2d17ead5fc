"""Deep-Compression stages after filter pruning: magnitude pruning, trained weight sharing, Huffman coding.

Source: Han, Mao & Dally, "Deep Compression", arXiv 1510.00149 (ICLR 2016); the CAR paper
(Abbasi-Asl & Yu, arXiv 1705.07356) applies it after CAR filter pruning and reports a 42x smaller
conv layer. Modules: :mod:`.stages` (masks, k-means sharing, both as training hooks), :mod:`.sparse`
(relative positions with filler zeros), :mod:`.huffman` (canonical codes), :mod:`.container` (the
file, :func:`decompress`, :func:`size_report`), :mod:`.pipeline` (the whole chain).
"""

from .container import decompress, read_compressed, size_report, write_compressed
from .stages import MaskHook, SharedLayer, SharingHook, compressible_layers, magnitude_masks, share_weights

__all__ = ["MaskHook", "SharedLayer", "SharingHook", "compressible_layers", "decompress", "magnitude_masks",
           "read_compressed", "share_weights", "size_report", "write_compressed"]
