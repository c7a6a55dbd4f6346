"""The ``fxpga`` command line: one module per command, each holding that command's arguments
(``add``), its work and its printing (``run``).

Errors are one line on stderr and exit status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

from .. import __version__
from ..errors import FxpgaError, Terminated
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


def _on_sigterm(signum, frame):
    raise Terminated()


class _Stdout:
    """``sys.stdout`` that remembers whether writing to it failed (a full disk, a closed pipe),
    so that the error names standard output, not the file the command was writing."""

    def __init__(self, stream):
        self.stream = stream
        self.failed: OSError | None = None

    def write(self, s):
        try:
            return self.stream.write(s)
        except OSError as e:
            self.failed = e
            raise

    def flush(self):
        try:
            self.stream.flush()
        except OSError as e:
            self.failed = e
            raise

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def silence(self):
        """Nothing more reaches it: the interpreter's exit must not fail on it again."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())


def main(argv: list[str] | None = None) -> int:
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    debug = False
    stdout = sys.stdout = _Stdout(sys.stdout)
    try:
        args = build_parser().parse_args(argv)
        debug = args.debug
        code = args.func(args)
        sys.stdout.flush()
        return code
    except FxpgaError as e:
        if debug:
            raise
        print(f"fxpga: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fxpga: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("fxpga: terminated", file=sys.stderr)
        return 143
    except OSError as e:  # the machine's, not fxpga's: a full disk, a read-only file system
        if debug:
            raise
        if stdout.failed is not None:
            stdout.silence()
            where = "standard output"
        else:
            where = e.filename or "writing a file"
        print(f"fxpga: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 1
    except Exception as e:
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(
            f"fxpga: internal error: {type(e).__name__}: {msg} (run with --debug for the "
            f"traceback)",
            file=sys.stderr,
        )
        return 2
    finally:
        sys.stdout = stdout.stream
        if in_main:
            signal.signal(signal.SIGTERM, previous)
