"""What ``fxpga compile`` writes: program, memory images, Verilog, and the estimate table."""

from __future__ import annotations

import json
from pathlib import Path

from ..outdir import OutputDir
from .compiler import Program, desc_fields
from .engine import Engine, program_words


def _hex(values, bits: int) -> str:
    digits = (bits + 3) // 4
    mask = (1 << bits) - 1
    return "".join(f"{v & mask:0{digits}x}\n" for v in values)


def estimate_rows(prog: Program) -> list[list[str]]:
    lanes = prog.config.lanes
    rows = []
    for op, cyc in zip(prog.ops, prog.estimate, strict=True):
        rows.append(
            [
                op.name,
                "+".join(op.fused[1:]) or "-",
                f"{op.C}x{op.H}x{op.W}",
                f"{op.O}x{op.POH}x{op.POW}",
                f"{op.KH}x{op.KW}/{op.SH}",
                str(op.groups(lanes)),
                f"{op.macs:,}",
                f"{cyc:,}",
                f"{100 * op.macs / (lanes * cyc):.1f}",
            ]
        )
    rows.append(
        [
            "total",
            "",
            "",
            "",
            "",
            "",
            f"{prog.total_macs:,}",
            f"{prog.total_cycles:,}",
            f"{100 * prog.utilization():.1f}",
        ]
    )
    return rows


ESTIMATE_HEADER = [
    "op",
    "fused",
    "in",
    "out",
    "kernel/stride",
    "groups",
    "MACs",
    "cycles",
    "MAC util %",
]


def program_json(prog: Program, model_sha: str | None = None) -> dict:
    return {
        "schema": "fxpga.program",
        "schema_version": 1,
        "engine": prog.config.to_json(),
        "model_sha256": model_sha,
        "in_size": prog.in_size,
        "out_size": prog.out_size,
        "out_buf": prog.out_buf,
        "fmap_depth": prog.fmap_depth,
        "wmem_depth": len(prog.wmem[0]),
        "bmem_depth": len(prog.bmem),
        "input_format": prog.input_fmt.to_json(),
        "output_format": prog.output_fmt.to_json(),
        "ops": [
            {
                "name": op.name,
                "fused": op.fused,
                "cycles": cyc,
                "macs": op.macs,
                "descriptor": d,
            }
            for op, cyc, d in zip(prog.ops, prog.estimate, prog.descriptors, strict=True)
        ],
        "descriptor_fields": list(desc_fields(prog.config)),
        "total_cycles": prog.total_cycles,
        "total_macs": prog.total_macs,
    }


def write(
    prog: Program,
    out_dir: str | Path | OutputDir,
    *,
    verilog: bool = True,
    model_sha: str | None = None,
    name: str = "fxpga_engine",
) -> Path:
    """Write everything into ``out_dir`` (new, empty, or written by fxpga before: see
    :mod:`fxpga.outdir`), staged and then moved into place."""
    out = out_dir if isinstance(out_dir, OutputDir) else OutputDir(out_dir)
    with out as tmp:
        cfg = prog.config
        (tmp / "program.json").write_text(json.dumps(program_json(prog, model_sha), indent=1))
        (tmp / "program.hex").write_text(_hex(program_words(prog), 32))
        (tmp / "bias.hex").write_text(_hex(prog.bias_words, prog.bias_word_bits))
        for lane, bank in enumerate(prog.wmem):
            (tmp / f"wbank{lane}.hex").write_text(_hex(bank, cfg.weight_bits))
        if verilog:
            from amaranth.back import verilog as back

            text = back.convert(Engine(cfg, prog), name=name)
            (tmp / f"{name}.v").write_text(text)
    out = out.path
    return out
