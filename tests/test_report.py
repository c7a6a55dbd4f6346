"""fxpga report: content against the model, both output formats, determinism, bad input, and
the HTML rendered by headless Chromium."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from fxpga import report
from fxpga.cli import main
from fxpga.hw import compiler
from fxpga.quant import artifact, sweep
from fxpga.quant.qformat import QFormat
from fxpga.report import plots

PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Images, table rows (lists of cell texts) and section titles of an HTML page."""

    def __init__(self, text):
        super().__init__()
        self.images, self.tables, self.h2 = [], [], []
        self._in = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
        self._in = tag

    def handle_data(self, data):
        if self._in in ("td", "th", "b"):
            self.tables[-1][-1][-1] += data
        elif self._in == "h2":
            self.h2.append(data)

    def handle_endtag(self, tag):
        self._in = None

    def table(self, header: str) -> dict[str, list[str]]:
        """The table whose first header cell is ``header``: its rows by first cell."""
        rows = next(t for t in self.tables if t[0][0] == header)
        return {r[0]: r for r in rows[1:]}


@pytest.fixture(scope="module")
def fxq(digits_q8, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "d.fxq"
    digits_q8.provenance.update({"dataset": "digits", "model": "digits-cnn"})
    artifact.save(digits_q8, path)
    return path


@pytest.fixture(scope="module")
def html_report(fxq):
    out = fxq.with_name("r.html")
    assert main(["report", str(fxq), "-o", str(out), "-q"]) == 0
    return out


def test_fractions_count_rounding_to_zero_and_saturation():
    # Q4.1: step 0.5, representable -4.0 .. 3.5; 0.2, -0.1 round to 0, 3.9, -4.5 saturate
    t = plots.Tensor(
        "l", "output", np.array([0.0, 0.2, -0.3, 1.0, 3.9, -4.5, -4.0, -0.1]), QFormat(4, 1)
    )
    zero, sat = t.fractions()
    assert (zero, sat) == (2 / 7, 2 / 7)  # of the 7 non-zero values
    assert (t.lo, t.hi) == (-1.0, 2.0)


def test_profile_rows_follow_the_model(digits_q8, digits):
    rows = report.tensors(digits_q8, digits.x_calib[:16])
    weighted = [la for la in digits_q8.layers if la.w_fmt]
    assert [r[0].layer for r in rows] == ["input"] + [la.name for la in weighted]
    for r, la in zip(rows[1:], weighted, strict=True):
        w, out = r
        assert w.fmt == la.w_fmt and out.fmt == la.out_fmt
        assert np.array_equal(w.values, la.node.weight)
        assert out.values.shape[0] == 16
    # conv1 is followed by a ReLU: its output is profiled as the quantizer targets it
    assert rows[1][1].values.min() >= 0
    # fc2 is the logits: negative values stay
    assert rows[-1][1].values.min() < 0


def test_html_report_content(html_report, digits_q8):
    text = html_report.read_text()
    page = Page(text)
    assert page.h2 == ["Model", "Layers", "Profile", "Accuracy against word width", "Engine cycles"]
    assert len(page.images) == 3
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,") and img["alt"]
    # every weighted layer's formats appear as the quantizer chose them
    for la in digits_q8.layers:
        if la.w_fmt:
            assert page.table("layer")[la.name][3:5] == [repr(la.w_fmt), repr(la.out_fmt)]
    # the cycle table is the compiler's, for the default 8 lanes
    prog = compiler.compile_model(digits_q8, compiler.EngineConfig.for_model(digits_q8, 8))
    cycles = page.table("op")
    for op, n in zip(prog.ops, prog.estimate, strict=True):
        assert cycles[op.name][2:4] == [f"{op.macs:,}", f"{n:,}"]
    assert cycles["total"][2:4] == [f"{prog.total_macs:,}", f"{prog.total_cycles:,}"]
    assert "http" not in re.sub(r"data:image/png;base64,[^'\"]+", "", text)  # self-contained


def test_accuracy_curve_matches_the_table(digits_graph, digits):
    """The curve's 8-bit points are the table's 8-bit models, in either scheme."""
    curve = sweep.bits_curve(digits_graph, digits, bits=(8,), schemes=("qiu", "dynamic"))
    row = sweep.measure(digits_graph, digits, sweep.TABLE[1])
    assert (row.scheme.label, row.scheme.scheme) == ("8-bit dynamic", "qiu")
    assert curve["qiu"] == [(8, row.top1)]
    default = next(s for s in sweep.TABLE if s.scheme == "dynamic" and s.widths == (8, 8, 8))
    assert curve["dynamic"] == [(8, sweep.measure(digits_graph, digits, default).top1)]


def test_markdown_report_and_determinism(fxq, html_report, tmp_path):
    out = tmp_path / "r.md"
    assert main(["report", str(fxq), "-o", str(out), "-q"]) == 0
    md = out.read_text()
    links = re.findall(r"!\[[^\]]*\]\((r_files/[a-z_]+\.png)\)", md)
    assert len(links) == 3
    pngs = {}
    for link in links:
        data = (tmp_path / link).read_bytes()
        assert data.startswith(PNG)
        pngs[link.split("/")[1]] = data
    # the HTML made from the same .fxq embeds the same bytes: rendering is deterministic
    embedded = [img["src"].split(",", 1)[1] for img in Page(html_report.read_text()).images]
    import base64

    assert sorted(base64.b64decode(e) for e in embedded) == sorted(pngs.values())
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_report_errors(fxq, tmp_path, capsys):
    cases = [
        (["-o", str(tmp_path / "r.pdf")], "must end in .html or .md"),
        (["-o", str(tmp_path / "no" / "r.html")], "does not exist"),
        (["--build", str(tmp_path), "-o", str(tmp_path / "r.html")], "no build_report.json"),
    ]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "build_report.json").write_text("{\n  nope")
    cases.append(
        (["--build", str(tmp_path / "bad"), "-o", str(tmp_path / "r.html")], "not valid JSON")
    )
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "build_report.json").write_text('{"board": "icebreaker"}')
    cases.append(
        (["--build", str(tmp_path / "half"), "-o", str(tmp_path / "r.html")], "no lanes, cycles")
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "build_report.json").write_text(
        json.dumps({"board": "orangecrab-25f", "lanes": 8, "cycles": 1234})
    )
    cases.append(
        (
            ["--build", str(tmp_path / "other"), "-o", str(tmp_path / "r.html")],
            "the build is for another model or engine: it runs 1,234 cycles",
        )
    )
    for argv, msg in cases:
        code = main(["report", str(fxq), "-q", *argv])
        _, err = capsys.readouterr()
        assert code == 1 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.html").exists()


def test_chromium_renders_every_image(html_report):
    browser = pytest.importorskip("browser")
    if browser.executable() is None:
        pytest.skip("chromium is not installed (make system-deps installs it as root)")
    images = browser.rendered_images(html_report)
    assert len(images) == 3
    for alt, complete, width, height in images:
        assert complete and width >= 600 and height >= 200, (alt, width, height)


def test_report_of_a_branching_graph(tmp_path):
    """A residual net: every layer in the table with its inputs, the add's output profiled,
    and the cycle table with the add in the post-processing of the conv before it (x + b(x):
    the other operand is b's input, so a copy of it goes to the buffer b writes)."""
    import torch
    import torch.nn as nn

    from fxpga.quant import data, frontend, quantizer

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            x = torch.relu(self.a(x))
            return self.fc(torch.flatten(torch.relu(x + self.b(x)), 1))

    torch.manual_seed(0)
    ds = data.load("digits")
    g = frontend.from_module(Net().eval(), ds.sample_shape)
    qm = quantizer.quantize_model(g, ds.x_calib[:64])
    qm.provenance.update({"dataset": "digits", "model": "net"})
    rep = report.make(qm, "net", ds)
    layers = next(s for s in rep.sections if s.title == "Layers")
    header, rows = layers.tables[0]
    assert header[:3] == ["layer", "op", "inputs"]
    assert [r[0] for r in rows] == [la.name for la in qm.layers]
    add = next(r for r in rows if r[1] == "add")
    assert add[2] == "relu, b" and add[5] == repr(qm["add"].out_fmt) and add[7] != "-"
    profiled = [r[-1].layer for r in report.tensors(qm, ds.x_calib[:8])]
    assert profiled == ["input", "a", "b", "add", "fc"]
    engine = next(s for s in rep.sections if s.title == "Engine cycles")
    header, rows = engine.tables[0]
    assert [r[:2] for r in rows[:-1]] == [
        ["a", "relu"],
        ["relu:copy", "-"],
        ["b", "add+relu_1+flatten"],
        ["fc", "-"],
    ]


def test_long_layer_names_are_shown_short_and_kept_whole(digits_graph, digits, tmp_path):
    """TensorFlow exports name layers with 200 characters: tables show them as op and
    index; the .fxq keeps the full names. Unsigned widths show as u8."""
    import copy

    from fxpga.quant import quantizer
    from fxpga.quant import report as text

    g = copy.deepcopy(digits_graph)
    long = "TFLITE2ONNX_FAF_model/activation_1/Relu;model/batch_normalization_1/" + "x" * 140
    renamed = {n.name: f"{long}/{k}" for k, n in enumerate(g.nodes) if n.op in ("conv", "relu")}
    for n in g.nodes:
        n.name = renamed.get(n.name, n.name)
        n.inputs = tuple(renamed.get(i, i) for i in n.inputs)
    qm = quantizer.quantize_model(g, digits.calib(32), unsigned=True)
    shown = text.display_names(qm)
    convs = [la.name for la in qm.layers if la.op == "conv"]
    assert [shown[c] for c in convs] == ["conv_0", "conv_1"]
    assert shown["fc1"] == "fc1" and len(set(shown.values())) == len(shown)
    table = text.layer_table(qm)
    assert long not in table and max(map(len, table.splitlines())) < 120
    assert re.search(r"^conv_0 +conv +\S+ +8/u8 ", table, re.M), table
    artifact.save(qm, tmp_path / "long.fxq")
    assert [la.name for la in artifact.load(tmp_path / "long.fxq").layers] == [
        la.name for la in qm.layers
    ]
