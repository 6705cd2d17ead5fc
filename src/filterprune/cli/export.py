"""``filterprune export``: a model or checkpoint to ONNX, checked against PyTorch with onnxruntime.

Example (a pruned run's checkpoint; a user's model needs its factory too):
    filterprune export --weights runs/l1/model.safetensors --out model.onnx
    filterprune export --model mynets:my_net --weights runs/mine/model.safetensors --out mine.onnx

The batch dimension is dynamic; tuple, list and dict outputs become one ONNX output each (dict entries
named by their keys). The file is written only if onnxruntime's outputs match torch's within --atol.
"""

from __future__ import annotations

import argparse
import json

from ._args import MODEL_HELP


def add_parser(sub) -> None:
    """Register ``filterprune export`` and its flags on the subcommand parsers ``sub``."""
    p = sub.add_parser("export", help="export a model to ONNX (checked with onnxruntime)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--weights", help="'auto', a .th/.pt file or a filterprune .safetensors checkpoint")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape (default: the one the checkpoint records, else 3 32 32, or 1 8 8 for convnet_small)")
    p.add_argument("--batch", type=int, default=2, help="batch size of the example input (the exported batch is dynamic)")
    p.add_argument("--out", required=True, help="destination .onnx file; must not exist unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--atol", type=float, default=1e-4, help="largest max |onnxruntime - torch| accepted")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export a model to ONNX (checked with onnxruntime) and print the result as JSON; returns 0.

    Raises:
        FilterpruneError: the export or the onnxruntime check failed, or ``--out`` exists (one line from
            ``cli.main``).
    """
    from ..workflows.info import export_model
    from ._args import check_export_args

    check_export_args(args)
    result = export_model(args.model, args.weights, args.out, input_size=args.input_size, batch=args.batch,
                          overwrite=args.overwrite, atol=args.atol)
    print(json.dumps(result, indent=2))
    return 0
