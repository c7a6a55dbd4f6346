"""The .fxq loader against hostile or careless files, and save against failures.

Each case edits the saved JSON (or the .npz) of the quantized digits model and checks the
one-line ``FxpgaError`` names the file, the layer and the field. Tests of the bounds also
check that nothing of the .npz is read before the JSON is refused.
"""

import copy
import errno
import hashlib
import io
import json
import os
import re
import zipfile

import numpy as np
import pytest

from fxpga.cli import main
from fxpga.errors import FxpgaError
from fxpga.quant import artifact, golden, ir, quantizer


@pytest.fixture
def fxq(tmp_path, digits_q8):
    path = tmp_path / "m.fxq"
    artifact.save(digits_q8, path)
    return path


def edit(path, change):
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def layer(obj, name):
    return next(e for e in obj["layers"] if e["name"] == name)


def refused(path, message):
    """``artifact.load`` refuses ``path`` in one line that names it and holds ``message``."""
    with pytest.raises(FxpgaError) as e:
        artifact.load(path)
    text = str(e.value)
    assert "\n" not in text and str(path.name) in text, text
    assert message in text, text
    return text


def never(*args, **kwargs):
    raise AssertionError("the .npz was read")


def set_in(*keys, value, of=lambda obj: obj):
    """An edit: ``of(obj)[k0][k1]... = value``."""

    def change(obj):
        o = of(obj)
        for k in keys[:-1]:
            o = o[k]
        o[keys[-1]] = value

    return change


def in_layer(name, *keys, value):
    """An edit of the entry of layer ``name``."""
    return set_in(*keys, value=value, of=lambda obj: layer(obj, name))


# ---- 1. what the hardware and the golden model derive is recomputed and checked


def test_edited_acc_bits_is_refused_by_compile(fxq, tmp_path, capsys):
    assert layer(json.loads(fxq.read_text()), "conv2")["acc_bits"] == 20
    edit(fxq, in_layer("conv2", "acc_bits", value=8))
    out = tmp_path / "out"
    code = main(["compile", str(fxq), "--no-verilog", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.strip().splitlines() == [
        f"fxpga: error: {fxq}: layer 'conv2': acc_bits 8 disagrees with its weights, bias "
        f"and input range (expected 20)"
    ]
    assert not out.exists()


DERIVED = [
    (in_layer("conv2", "acc_range", value=[-100, 100]), "layer 'conv2': acc_range [-100, 100]"),
    (in_layer("conv1", "in_range", value=[0, 127]), "layer 'conv1': in_range [0, 127] disagrees"),
    (in_layer("relu", "out_range", value=[-128, 127]), "layer 'relu': out_range [-128, 127]"),
    (in_layer("fc1", "out_range", value=[0, 127]), "layer 'fc1': out_range [0, 127] disagrees"),
    (in_layer("conv2", "shift", value=3), "layer 'conv2': shift 3 disagrees with the formats"),
    (set_in("max_acc_bits", value=16), "max_acc_bits 16 disagrees with the layers' acc_bits"),
    (set_in("output", "shape", value=[12]), "output.shape [12] disagrees"),
    (in_layer("pool1", "out_shape", value=[16, 2, 2]), "layer 'pool1': out_shape [16, 2, 2]"),
]


@pytest.mark.parametrize("change,message", DERIVED, ids=[m for _, m in DERIVED])
def test_edited_derived_field_is_refused(fxq, change, message):
    edit(fxq, change)
    refused(fxq, message)


def test_recomputed_values_are_the_quantizers(fxq, digits_q8):
    qm = artifact.load(fxq)
    for a, b in zip(qm.layers, digits_q8.layers, strict=True):
        assert (a.in_ranges, a.out_range, a.acc_range, a.acc_bits, a.shift) == (
            b.in_ranges,
            b.out_range,
            b.acc_range,
            b.acc_bits,
            b.shift,
        )


def test_residual_add_in_ranges_are_checked(tmp_path, rng):
    c = ir.Conv("c", weight=rng.normal(size=(2, 2, 1, 1)), bias=np.zeros(2))
    nodes = [c, ir.ReLU("r"), ir.Add("s", inputs=("r", ir.INPUT))]
    qm = quantizer.quantize_model(ir.Graph((2, 3, 3), nodes), rng.normal(size=(8, 2, 3, 3)))
    path = tmp_path / "s.fxq"
    artifact.save(qm, path)
    x = rng.normal(size=(4, 2, 3, 3))
    np.testing.assert_array_equal(golden.run(artifact.load(path), x), golden.run(qm, x))
    edit(path, in_layer("s", "in_ranges", value=[[0, 1], [-128, 127]]))
    refused(path, "layer 's': in_ranges [[0, 1], [-128, 127]] disagrees")


# ---- 2. every number is bounded before anything is allocated

BOUNDS = [
    (set_in("input", "format", "fl", value=10**9), "input.format: fl must be in -64..64"),
    (in_layer("conv1", "output", "fl", value=-65), "layer 'conv1': output: fl must be in -64..64"),
    (in_layer("conv1", "weight", "bits", value=33), "layer 'conv1': weight: bits must be in 2..32"),
    (
        in_layer("conv1", "attrs", "stride", value=[0, 1]),
        "conv1': attrs.stride must be in 1..239616",
    ),
    (
        in_layer("pool1", "attrs", "kernel", value=[0, 2]),
        "pool1': attrs.kernel must be in 1..239616",
    ),
    (in_layer("pool1", "attrs", "stride", value=[2, 10**40]), "attrs.stride must be in 1..239616"),
    (in_layer("conv1", "attrs", "padding", value=[-1, 1]), "attrs.padding must be in 0..1024"),
    (in_layer("conv1", "attrs", "kernel", value=[3, 300000]), "attrs.kernel must be in 1..239616"),
    (in_layer("conv1", "attrs", "groups", value=0), "layer 'conv1': attrs.groups must be in 1.."),
    (in_layer("conv1", "attrs", "groups", value=3), "attrs.groups 3 does not divide its 1 input"),
    (in_layer("conv2", "out_shape", value=[1000, 1000, 1]), "out_shape: samples of shape"),
    (in_layer("fc1", "in_shape", value=[10**12]), "layer 'fc1': in_shape must be in 1..239616"),
    (in_layer("fc1", "out_shape", value=[128, 1]), "fc1': out_shape must be (F,) for a linear"),
    (set_in("input", "shape", value=[1, 8, 8, 1]), "input.shape must have 1..3 entries, not 4"),
    (set_in("layers", value=[{"name": "r", "op": "relu"}] * 5000), "layers must have 1..4096"),
    (in_layer("fc1", "name", value="x" * 2000), "layers[7].name must be a string of 1..1024"),
    (in_layer("conv2", "out_shape", value=[65536, 1, 1]), "more than 1,916,928"),
]


@pytest.mark.parametrize("change,message", BOUNDS, ids=[m for _, m in BOUNDS])
def test_numbers_are_bounded_before_the_tensors_are_read(fxq, monkeypatch, change, message):
    edit(fxq, change)
    monkeypatch.setattr(artifact, "_read_tensors", never)
    refused(fxq, message)


def test_pad_and_clip_attrs_are_bounded(tmp_path, rng):
    nodes = [ir.Pad("p", pads=(1, 0, 0, 1)), ir.Clip("k", lo=0.0, hi=1.0), ir.Flatten("f")]
    qm = quantizer.quantize_model(ir.Graph((1, 2, 2), nodes), rng.normal(size=(4, 1, 2, 2)))
    path = tmp_path / "p.fxq"
    artifact.save(qm, path)
    assert artifact.load(path).graph["k"].hi == 1.0
    good = path.read_text()
    for change, message in [
        (in_layer("p", "attrs", "pads", value=[0, 0, 0, 10**6]), "attrs.pads must be in 0..1024"),
        (in_layer("p", "attrs", "pads", value=[0, 0, 1]), "attrs.pads ([left, right, top, bot"),
        (in_layer("k", "attrs", "hi", value=1e300), "attrs.hi must be null or a number within"),
        (in_layer("k", "attrs", "lo", value=True), "attrs.lo must be null or a number"),
        (in_layer("k", "attrs", "lo", value=5.0), "lies in [5.0, 1.0] (set a finer format"),
    ]:
        path.write_text(good)
        edit(path, change)
        refused(path, message)


def test_padded_input_is_bounded(tmp_path, rng):
    """A pool of stride 1024 keeps a 1x1 output from a 2x2 map padded by 512 on each side:
    the padded map, not the output, is what the golden model would allocate."""
    nodes = [ir.MaxPool("m", kernel=(1, 1), stride=(1, 1)), ir.Flatten("f")]
    qm = quantizer.quantize_model(ir.Graph((1, 2, 2), nodes), rng.normal(size=(4, 1, 2, 2)))
    path = tmp_path / "w.fxq"
    artifact.save(qm, path)

    def change(obj):
        m, f = obj["layers"]
        m["attrs"] = {"kernel": [1024, 1024], "stride": [1024, 1024], "padding": [512, 512]}
        m["out_shape"] = f["in_shape"] = [1, 1, 1]
        f["out_shape"] = obj["output"]["shape"] = [1]

    edit(path, change)
    refused(path, "layer 'm': its input padded by attrs.padding holds 1,052,676 values")


def test_huge_integer_literal(fxq):
    text = fxq.read_text()
    fxq.write_text(text.replace('"acc_bits": 17', '"acc_bits": ' + "9" * 5000, 1))
    refused(fxq, "invalid JSON: Exceeds the limit (4300 digits)")


def test_huge_json_file_is_not_read_whole(fxq):
    with open(fxq, "a") as f:
        f.write(" " * artifact.MAX_JSON_BYTES)
    refused(fxq, "more than 16,777,216 bytes, too large for a JSON file")


# ---- 3. what used to escape as an internal error

TYPES = [
    (set_in("layers", value=[]), "layers must have 1..4096 entries, not 0"),
    (set_in("layers", value={}), "layers must be a list, not {}"),
    (set_in("tensors", value=None), "tensors must be an object, not null"),
    (set_in("tensors", "file", value="/tmp/m.fxq.npz"), "tensors.file must be the name of an .npz"),
    (set_in("tensors", "file", value="../m.fxq.npz"), "tensors.file must be the name of an .npz"),
    (set_in("tensors", "file", value=".."), "tensors.file must be the name of an .npz"),
    (set_in("tensors", "sha256", value=7), "tensors.sha256 must be 64 hex digits, not 7"),
    (set_in("provenance", value="digits"), 'provenance must be an object, not "digits"'),
    (set_in("provenance", value={"widths": 8}), "provenance.widths must be an object, not 8"),
    (set_in("provenance", value={"dataset": 3}), "provenance.dataset must be a string or null"),
    (set_in("provenance", value={"widths": {"act": 99}}), "provenance.widths.act: bits must be"),
    (set_in("host_tail", value="softmax"), "host_tail must be a list"),
    (set_in("host_tail", value=[["softmax"]]), "host_tail must list ops of softmax"),
    (set_in("scheme", value=1), "scheme must be one of 'dynamic', 'qiu', 'static', not 1"),
    (set_in("scheme", value=[1]), "scheme must be one of 'dynamic', 'qiu', 'static', not"),
    (set_in("schema_version", value=True), "schema version true is not supported"),
    (set_in("input", value=[1, 8, 8]), "input must be an object"),
    (set_in("input", "format", value=None), 'input.format: expected a format {"bits": B, "fl"'),
    (set_in("extra", value=1), "unknown field(s) extra"),
    (in_layer("conv2", "acc_bits", value="20"), "layer 'conv2': acc_bits must be an integer"),
    (in_layer("conv2", "acc_bits", value=True), "layer 'conv2': acc_bits must be an integer"),
    (in_layer("conv2", "shift", value=8.0), "layer 'conv2': shift must be an integer, not 8.0"),
    (in_layer("conv2", "acc_range", value={"lo": 0}), "acc_range must be a list"),
    (in_layer("conv2", "in_shape", value="16x4x4"), "in_shape must be a list"),
    (in_layer("conv2", "in_shape", value=[16, 4, True]), "in_shape must be an integer in 1.."),
    (in_layer("conv2", "attrs", value=[]), "layer 'conv2': attrs must be an object, not []"),
    (in_layer("conv2", "attrs", "dilation", value=2), "unknown attrs dilation for a conv"),
    (in_layer("conv2", "input", value={"bits": 8, "fl": 5, "x": 1}), "conv2': input: expected"),
    (in_layer("conv2", "stats", value=[]), "conv2': stats must be an object"),
    (in_layer("conv2", "stats", "output_sqnr_db", value="high"), "stats.output_sqnr_db must be"),
    (in_layer("conv2", "inputs", value=[1]), "inputs must be a list of layer names"),
    (in_layer("conv2", "source", value=["zoo.py"]), "source must be a string or null"),
    (in_layer("conv2", "acc_bit", value=20), "unknown field(s) acc_bit for a conv"),
    (in_layer("relu", "shift", value=0), "layer 'relu': unknown field(s) shift for a relu"),
    (in_layer("conv2", "op", value=7), "layer 'conv2': unknown op 7"),
    (in_layer("conv2", "name", value=None), "layers[3].name must be a string"),
    (in_layer("conv2", "name", value="conv1"), "'conv1' is a duplicate layer name"),
    (in_layer("relu_1", "inputs", value=["nowhere"]), "its input 'nowhere' is not the graph"),
]


@pytest.mark.parametrize("change,message", TYPES, ids=[m for _, m in TYPES])
def test_wrong_json_is_one_line(fxq, change, message):
    edit(fxq, change)
    refused(fxq, message)


def test_missing_field_is_named(fxq):
    edit(fxq, lambda obj: layer(obj, "conv2").pop("acc_range"))
    refused(fxq, "layer 'conv2': missing field 'acc_range'")


def test_nested_too_deep(fxq):
    fxq.write_text('{"schema": "fxpga.qmodel", "provenance": ' + "[" * 10000 + "]" * 10000 + "}")
    refused(fxq, "invalid JSON: nested too deep")


def rewrite_npz(fxq, members):
    """Replace the tensors of ``fxq`` by the zip ``members`` (name → (bytes, compression))
    and record the new sha256, as a careful forger would."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, (data, compression) in members.items():
            zf.writestr(name, data, compress_type=compression)
    blob = buf.getvalue()
    artifact.tensors_path(fxq).write_bytes(blob)
    edit(fxq, set_in("tensors", "sha256", value=hashlib.sha256(blob).hexdigest()))


def members_of(fxq):
    with zipfile.ZipFile(artifact.tensors_path(fxq)) as zf:
        return {n: (zf.read(n), zipfile.ZIP_STORED) for n in zf.namelist()}


def test_npz_member_that_is_not_npy(fxq):
    members = members_of(fxq)
    members["conv1.w.npy"] = (b"not an array at all", zipfile.ZIP_STORED)
    rewrite_npz(fxq, members)
    refused(fxq, "refusing to load 'conv1.w': the magic string is not correct")


def test_npz_member_huge_when_decompressed(fxq, monkeypatch):
    """A 16 MB member of zeros deflated to 16 kB, whose header declares 2^40 integers: refused
    from its header, before its data is decompressed."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<i8", "fortran_order": False, "shape": (1 << 40,)}
    )
    members = members_of(fxq)
    members["conv1.w.npy"] = (header.getvalue() + bytes(16 << 20), zipfile.ZIP_DEFLATED)
    rewrite_npz(fxq, members)
    assert artifact.tensors_path(fxq).stat().st_size < 1 << 20
    reads = []
    read = zipfile.ZipExtFile.read

    def counted(self, n=-1):
        reads.append(n)
        return read(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counted)
    refused(fxq, "'conv1.w' has shape (1099511627776,), m.fxq declares (16, 1, 3, 3)")
    assert reads and all(0 <= n < 1 << 16 for n in reads)


@pytest.mark.parametrize(
    "member,data,message",
    [
        ("conv1.w.npy", np.zeros((16, 1, 3, 3)), "'conv1.w' must be integer of at most 64 bits"),
        ("conv1.b.npy", np.zeros(4, np.int64), "'conv1.b' has shape (4,), m.fxq declares (16,)"),
        ("conv1.b_float.npy", np.full(16, np.nan), "'conv1.b_float' has non-finite values"),
        ("extra.npy", np.zeros(1), 'holds "extra.npy", which no layer of m.fxq has'),
    ],
)
def test_npz_members_are_checked(fxq, member, data, message):
    members = members_of(fxq)
    buf = io.BytesIO()
    np.save(buf, data)
    members[member] = (buf.getvalue(), zipfile.ZIP_STORED)
    rewrite_npz(fxq, members)
    refused(fxq, message)


def test_npz_member_missing(fxq):
    members = members_of(fxq)
    del members["fc2.b.npy"]
    rewrite_npz(fxq, members)
    refused(fxq, "has no array 'fc2.b' (layer 'fc2')")


def test_object_array_is_refused_without_unpickling(fxq):
    members = members_of(fxq)
    buf = io.BytesIO()
    np.save(buf, np.array([object()] * 16, dtype=object), allow_pickle=True)
    members["conv1.b.npy"] = (buf.getvalue(), zipfile.ZIP_STORED)
    rewrite_npz(fxq, members)
    refused(fxq, "'conv1.b' must be integer of at most 64 bits, not object")


def test_npz_larger_than_its_tensors(fxq):
    npz = artifact.tensors_path(fxq)
    with open(npz, "ab") as f:
        f.write(bytes(1 << 20))
    edit(fxq, set_in("tensors", "sha256", value=hashlib.sha256(npz.read_bytes()).hexdigest()))
    refused(fxq, "bytes, more than the tensors m.fxq declares take")


def test_legacy_tensors_entry_without_file(fxq, digits_q8):
    edit(fxq, lambda obj: obj["tensors"].pop("file"))
    assert artifact.load(fxq).max_acc_bits == digits_q8.max_acc_bits


# ---- 4. save: the pair stays loadable, nothing is left behind


def other_model(qm):
    """``qm`` with other float weights (so other tensors) and another provenance."""
    new = copy.deepcopy(qm)
    new.layers[-1].node.weight[0, 0] += 1.0
    new.provenance = {"dataset": "new"}
    return new


def listing(d):
    return sorted(p.name for p in d.iterdir())


def test_resave_leaves_only_the_pair(fxq, digits_q8):
    artifact.save(other_model(digits_q8), fxq)
    assert listing(fxq.parent) == ["m.fxq", "m.fxq.npz"]
    assert artifact.load(fxq).provenance == {"dataset": "new"}


@pytest.mark.parametrize("fail_at", [1, 2, 3])
@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_interrupted_save_keeps_the_old_pair(fxq, digits_q8, monkeypatch, fail_at, error):
    """Calls of os.replace: 1 moves the old tensors aside, 2 puts the new ones in place, 3
    replaces the JSON; an interrupt at any of them leaves the old .fxq as it was."""
    before = {p: p.read_bytes() for p in (fxq, artifact.tensors_path(fxq))}
    calls = []
    real = os.replace

    def replace(a, b):
        calls.append((a, b))
        if len(calls) == fail_at:
            raise error(errno.ENOSPC, "No space left on device")
        real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(FxpgaError if error is OSError else KeyboardInterrupt) as e:
        artifact.save(other_model(digits_q8), fxq)
    if error is OSError:
        assert re.fullmatch(
            r"\S+m\.fxq(\.npz)?: cannot write: No space left on device", str(e.value)
        )
    monkeypatch.undo()
    assert listing(fxq.parent) == ["m.fxq", "m.fxq.npz"]
    assert {p: p.read_bytes() for p in before} == before


def test_save_interrupted_twice_still_loads(fxq, digits_q8, monkeypatch):
    """Ctrl-C between the two renames, and again while putting the old tensors back: the old
    .fxq finds them where they were moved aside, and the next save removes them."""
    calls = []
    real = os.replace

    def replace(a, b):
        calls.append((a, b))
        if len(calls) >= 3:
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        artifact.save(other_model(digits_q8), fxq)
    monkeypatch.undo()
    assert len(listing(fxq.parent)) == 3  # m.fxq, the new m.fxq.npz, the old ones aside
    assert artifact.load(fxq).provenance == digits_q8.provenance
    artifact.save(other_model(digits_q8), fxq)
    assert listing(fxq.parent) == ["m.fxq", "m.fxq.npz"]
    assert artifact.load(fxq).provenance == {"dataset": "new"}


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, digits_q8, monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(FxpgaError, match=r"m\.fxq\.npz: cannot write: No space left on device$"):
        artifact.save(digits_q8, tmp_path / "m.fxq")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("which", ["m.fxq", "m.fxq.npz"])
def test_save_onto_a_directory_writes_nothing(tmp_path, digits_q8, which):
    (tmp_path / which).mkdir()
    other = "m.fxq.npz" if which == "m.fxq" else "m.fxq"
    (tmp_path / other).write_bytes(b"not fxpga's")
    with pytest.raises(FxpgaError, match=f"{which}: is a directory"):
        artifact.save(digits_q8, tmp_path / "m.fxq")
    assert listing(tmp_path) == sorted([which, other])
    assert (tmp_path / other).read_bytes() == b"not fxpga's"


def test_save_into_a_missing_directory(tmp_path, digits_q8):
    with pytest.raises(FxpgaError, match="directory '.*nowhere' does not exist"):
        artifact.save(digits_q8, tmp_path / "nowhere" / "m.fxq")


def test_saved_files_follow_the_umask(tmp_path, digits_q8):
    old = os.umask(0o027)
    try:
        artifact.save(digits_q8, tmp_path / "m.fxq")
    finally:
        os.umask(old)
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o640}
