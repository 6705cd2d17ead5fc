"""The ``filterprune`` command: registers the subcommands, sets up logging, turns errors into one line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from ..errors import FilterpruneError
from ..utils.env import code_version
from ..utils.progress import TqdmLoggingHandler, set_progress
from . import car_scores, compress, demo, evaluate, explain, export, info, plot, prune, train
from ._args import Parser

QUIET_HELP = ("no progress bars and no info log lines (warnings and errors are still shown); bars are also off "
              "when stderr is not a terminal, unless FILTERPRUNE_PROGRESS=1")

COMMANDS = (demo, train, evaluate, info, prune, export, car_scores, compress, explain, plot)


def build_parser() -> argparse.ArgumentParser:
    """The ``filterprune`` argument parser with every subcommand registered (one line per command)."""
    parser = Parser(
        prog="filterprune",
        description="Structured filter pruning for PyTorch CNNs (CAR, C-SGD, PLS+VIP and baselines).",
    )
    parser.add_argument("--version", action="version", version=f"filterprune {code_version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    for command_parser in sub.choices.values():
        command_parser.set_defaults(parser=command_parser)
        # also after the command (filterprune prune ... --quiet); SUPPRESS keeps a top-level -q
        command_parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    return parser


def one_line(e: BaseException) -> str:
    """The error's message on one line (a message that spans lines is joined with "; ")."""
    parts = [p.strip() for p in str(e).splitlines() if p.strip()]
    return "; ".join(parts) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``filterprune`` command: parse ``argv``, run the subcommand, return its exit status.

    Errors the user can fix (``FilterpruneError``, ``ValueError``, missing or existing files) are
    printed as one line on stderr with exit status 2 (``--debug`` re-raises them); Ctrl-C exits 130.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's own parser, so the line names the command
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by the commands that write a run folder
    from ..distributed import finish_distributed, init_distributed

    rank, world = init_distributed()  # under torchrun: one process group for the whole command
    if rank > 0:  # only rank 0 prints results; the others log warnings and errors only
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    handler = TqdmLoggingHandler(sys.stderr)  # log lines above the progress bars, never through them
    logging.basicConfig(level=logging.WARNING if args.quiet or rank > 0 else logging.INFO,
                        format=(f"rank{rank} " if world > 1 else "") + "%(levelname)s %(name)s: %(message)s",
                        handlers=[handler], force=True)
    previous = set_progress(False if args.quiet or rank > 0 else None)  # None: bars on a terminal only
    # SIGTERM unwinds like Ctrl-C: a run records why it stopped (run_state.json) and releases its lock.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.run(args)
    except (FilterpruneError, ValueError, FileNotFoundError, FileExistsError) as e:
        if args.debug:
            raise
        print(f"filterprune {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a folder that became read-only mid-run: one line, the run is kept
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"filterprune {args.command}: error: {where}{e.strerror or one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        set_progress(previous)  # a Python caller's own setting survives main()
        finish_distributed()


def _terminated(signum, frame) -> None:
    print("terminated", file=sys.stderr)
    sys.exit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
