"""bench/'s shared helpers: docs/RESULTS.md sections are replaced in place, atomically, and the
boards table keeps the rows of boards that were not rebuilt."""

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import boards
    import results

    yield results, boards
    for name in ("results", "boards"):
        sys.modules.pop(name, None)


def test_update_section_replaces_only_its_block(bench, tmp_path):
    results, _ = bench
    doc = tmp_path / "R.md"
    results.update_section("a", "first A", doc)
    results.update_section("b", "only B", doc)
    results.update_section("a", "second A", doc)
    text = doc.read_text()
    assert text.startswith(results.HEADER)
    assert "first A" not in text and "second A" in text and "only B" in text
    assert text.index("second A") < text.index("only B")  # a stays where it was
    assert [p.name for p in tmp_path.iterdir()] == ["R.md"]  # no temporary files left


def test_boards_table_keeps_other_boards(bench, tmp_path):
    results, boards = bench
    doc = tmp_path / "R.md"
    row = ["icebreaker", "8", *["x"] * (len(boards.HEADER) - 2)]
    results.update_section("boards", results.markdown_table(boards.HEADER, [row]), doc)
    assert boards.previous_rows(doc) == {"icebreaker": row}
    # a table with another header (an older layout) is not reused
    results.update_section("boards", results.markdown_table(["board", "lanes"], [row[:2]]), doc)
    assert boards.previous_rows(doc) == {}


def test_kws_features_follow_the_reference_recipe(monkeypatch):
    """bench/realdata.py's MFCCs: 49 frames of 10 coefficients from one second at 16 kHz, 40
    triangular mel bands from 20 to 4000 Hz; a pure tone lights the band around it."""
    monkeypatch.syspath_prepend(str(BENCH))
    import realdata

    mel = realdata._mel_matrix()
    assert mel.shape == (257, 40) and not mel[0].any()  # the DC bin is unused
    hz = np.linspace(0, 8000, 257)
    peaks = hz[mel.argmax(axis=0)]
    assert np.all(np.diff(peaks) >= 0) and 20 <= peaks[0] < 100 and 3500 < peaks[-1] <= 4000
    t = np.arange(realdata.RATE) / realdata.RATE
    feats = realdata.mfcc(0.5 * np.sin(2 * np.pi * 1000 * t))
    assert feats.shape == (49, 10)
    spec = np.abs(np.fft.rfft(0.5 * np.sin(2 * np.pi * 1000 * t[:480]), 512)) @ mel
    assert abs(peaks[spec.argmax()] - 1000) < 100
    sys.modules.pop("realdata", None)


def test_ad_features_follow_the_reference_recipe(monkeypatch):
    """bench/realdata.py's anomaly-detection frames: 128 Slaney mel bands over 0-8000 Hz (linear
    below 1 kHz, each of unit area), the power in dB, five 32 ms frames flattened."""
    monkeypatch.syspath_prepend(str(BENCH))
    import realdata

    mel = realdata._slaney_mel(128, 1024)
    hz = np.linspace(0, 8000, 513)
    assert mel.shape == (513, 128)
    peaks = hz[mel.argmax(axis=0)]
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > 7000
    low = peaks[peaks < 900]
    assert np.ptp(np.diff(low)) <= hz[1] + 1e-9  # equally spaced below 1 kHz
    area = (mel * hz[1]).sum(axis=0)  # sampled: a narrow triangle's is off by a few %
    assert abs(area[20:].mean() - 1) < 0.02 and np.all(np.abs(area[60:] - 1) < 0.05)
    t = np.arange(10 * realdata.RATE) / realdata.RATE
    x = realdata.logmel_frames(0.5 * np.sin(2 * np.pi * 1000 * t))
    assert x.shape == (313 - 4, 640)
    frame = x[100].reshape(5, 128)
    assert abs(peaks[frame[2].argmax()] - 1000) < 60
    np.testing.assert_array_equal(x[101, :512], x[100, 128:])  # runs overlap by four frames
    rng = np.random.default_rng(0)
    assert np.isfinite(realdata.logmel_frames(realdata.machine(rng, True, 1.0))).all()
    sys.modules.pop("realdata", None)
