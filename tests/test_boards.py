"""Real bitstream builds (yowasp yosys + nextpnr). Deselect locally with -m 'not board'."""

import pytest

from fxpga.boards import build as boards
from fxpga.cli import main
from fxpga.errors import FxpgaError
from fxpga.quant import artifact

pytestmark = pytest.mark.board


def test_orangecrab_bitstream(digits_q8, tmp_path, capsys):
    artifact.save(digits_q8, tmp_path / "d.fxq")
    out = tmp_path / "oc"
    code = main(
        [
            "build",
            str(tmp_path / "d.fxq"),
            "--board",
            "orangecrab-25f",
            "--lanes",
            "8",
            "-o",
            str(out),
            "-q",
        ]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err
    bit = out / "fxpga.bit"
    assert bit.exists() and bit.stat().st_size > 100_000
    assert "MULT18X18D" in stdout and "fmax" in stdout and "GMAC/s" in stdout
    assert "TRELLIS_COMB" in stdout


def test_unknown_board():
    with pytest.raises(FxpgaError, match=r"unknown board 'de10' \(have: icebreaker"):
        boards.board("de10")
