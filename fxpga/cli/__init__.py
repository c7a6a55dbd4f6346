"""The ``fxpga`` command line: one module per command, each holding that command's arguments
(``add``), its work and its printing (``run``).

Errors are one line on stderr and exit status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import FxpgaError
from .common import Parser

# in the order of the flow; each names a module of this package
COMMANDS = ("train", "quantize", "eval", "compile", "simulate", "build", "run", "report")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fxpga", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"fxpga {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FxpgaError as e:
        if args.debug:
            raise
        print(f"fxpga: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fxpga: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(
            f"fxpga: internal error: {type(e).__name__}: {msg} (run with --debug for the "
            f"traceback)",
            file=sys.stderr,
        )
        return 2
