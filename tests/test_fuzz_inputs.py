"""Mutated .onnx, .fxq and .npz files through the command line, for a bounded time: every run
ends in success or one ``fxpga: error:`` line (never a traceback or an internal error) and
leaves nothing behind but its output.

Mutation ``i`` of a format is drawn from ``random.Random(i)``, so a failure names the iteration
that reproduces it; ``FXPGA_FUZZ_SECONDS`` (default 8 per format) sets how long each format runs."""

import copy
import hashlib
import io
import json
import os
import random
import shutil
import time
import zipfile

import numpy as np
import pytest

from fxpga.cli import main

SECONDS = float(os.environ.get("FXPGA_FUZZ_SECONDS", "8"))
MAX_ITERATIONS = 400

HOSTILE = [0, -1, 1, 2, 65, -65, 10**9, 10**40, 1e308, float("nan"), 0.5, True, None, "", "x",
           [], {}, [0], [[1]], {"a": 1}, "../../etc/passwd", "/tmp/x"]  # fmt: skip


def tiny_onnx() -> bytes:
    """Conv 1→2 3×3 (padded), ReLU, MaxPool 2, Flatten, Gemm → 4, on a 1×4×4 input."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[init("w1", 2, 1, 3, 3), init("b1", 2), init("w2", 4, 8), init("b2", 4)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def dataset_npz() -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(24, 1, 4, 4)).astype(np.float32), y=rng.integers(0, 4, 24))
    return buf.getvalue()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    (d / "tiny.onnx").write_bytes(tiny_onnx())
    (d / "data.npz").write_bytes(dataset_npz())
    argv = ["quantize", str(d / "tiny.onnx"), "--data", str(d / "data.npz"), "--calib", "16"]
    assert main([*argv, "-o", str(d / "tiny.fxq"), "-q"]) == 0
    return d


def flip_bytes(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    b = bytearray(blob)
    how = rng.choice(["flip", "truncate", "splice", "zero"])
    if how == "truncate":
        n = rng.randrange(len(b))
        return bytes(b[:n]), f"truncated to {n} bytes"
    if how == "splice":
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        return bytes(b[:j] + b[i:j] + b[j:]), f"bytes {i}:{j} repeated"
    k = rng.randint(1, 8)
    for _ in range(k):
        i = rng.randrange(len(b))
        b[i] = 0 if how == "zero" else b[i] ^ (1 << rng.randrange(8))
    return bytes(b), f"{k} bytes {'zeroed' if how == 'zero' else 'flipped'}"


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def mutate_json(rng: random.Random, text: str) -> tuple[bytes, str]:
    doc = json.loads(text)
    paths = [p for p in _paths(doc) if p]
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if rng.random() < 0.15 and isinstance(parent, dict):
            parent.pop(path[-1], None)
            what = f"{'/'.join(map(str, path))} removed"
        else:
            v = rng.choice(HOSTILE)
            if isinstance(parent[path[-1]], int | float) and rng.random() < 0.5:
                v = parent[path[-1]] + rng.choice([-1, 1, 8, -8])
            parent[path[-1]] = copy.deepcopy(v)
            what = f"{'/'.join(map(str, path))} = {v!r}"
        paths = [p for p in _paths(doc) if p]
    return json.dumps(doc).encode(), what


def check_run(capfd, argv, tmp, keep, outputs, what):
    code = main(argv)
    err = capfd.readouterr().err
    where = f"{what}: fxpga {' '.join(argv)}"
    assert code in (0, 1), f"{where}: exit {code}: {err[-500:]}"
    assert "Traceback" not in err and "internal error" not in err, f"{where}: {err[-500:]}"
    if code == 1:
        assert err.strip().splitlines()[-1].startswith("fxpga: error: "), f"{where}: {err}"
    left = {p.name for p in tmp.iterdir()} - set(keep)
    allowed = set(outputs) if code == 0 else set()
    assert left <= allowed, f"{where}: left {sorted(left - allowed)} behind"
    for name in left:
        p = tmp / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()  # the test's own outputs


def fuzz(capfd, tmp, make_case):
    """Run ``make_case(rng) -> (argv, inputs, outputs, what)`` until the time is up."""
    deadline = time.monotonic() + SECONDS
    i = 0
    while i < MAX_ITERATIONS and (i < 5 or time.monotonic() < deadline):
        argv, keep, outputs, what = make_case(random.Random(i))
        check_run(capfd, argv, tmp, keep, outputs, f"iteration {i}: {what}")
        i += 1
    assert i >= 5


def test_fuzz_fxq(seeds, tmp_path, capfd):
    text = (seeds / "tiny.fxq").read_text()
    (tensors,) = seeds.glob("tiny.fxq*.npz")
    npz = tensors.read_bytes()

    def case(rng):
        for p in tmp_path.iterdir():
            p.unlink()
        f = tmp_path / "m.fxq"
        if rng.random() < 0.3:  # damaged tensors, half of them with a matching sha256
            blob, what = flip_bytes(rng, npz)
            doc = json.loads(text)
            if rng.random() < 0.5:
                doc["tensors"]["sha256"] = hashlib.sha256(blob).hexdigest()
                what += " (sha256 updated)"
            data, what = json.dumps(doc).encode(), f"tensors {what}"
        elif rng.random() < 0.3:
            data, what = flip_bytes(rng, text.encode())
            blob = npz
        else:
            data, what = mutate_json(rng, text)
            blob = npz
        f.write_bytes(data)
        (tmp_path / tensors.name).write_bytes(blob)
        keep = ["m.fxq", tensors.name]
        if rng.random() < 0.5:
            argv = ["compile", str(f), "--no-verilog", "-o", str(tmp_path / "out"), "-q"]
        else:
            argv = ["eval", str(f), "--data", str(seeds / "data.npz"), "-q"]
        return argv, keep, ["out"], what

    fuzz(capfd, tmp_path, case)


def test_fuzz_onnx(seeds, tmp_path, capfd):
    blob = (seeds / "tiny.onnx").read_bytes()

    def case(rng):
        data, what = flip_bytes(rng, blob)
        (tmp_path / "m.onnx").write_bytes(data)
        out = tmp_path / "q.fxq"
        argv = ["quantize", str(tmp_path / "m.onnx"), "--data", str(seeds / "data.npz")]
        argv += ["--calib", "8", "-o", str(out), "-q"]
        tensors = [p.name for p in seeds.glob("tiny.fxq*.npz")]
        outputs = ["q.fxq", *(n.replace("tiny", "q", 1) for n in tensors)]
        return argv, ["m.onnx"], outputs, what

    fuzz(capfd, tmp_path, case)


def test_fuzz_npz(seeds, tmp_path, capfd):
    blob = (seeds / "data.npz").read_bytes()
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        members = {n: z.read(n) for n in z.namelist()}

    def case(rng):
        if rng.random() < 0.5:
            data, what = flip_bytes(rng, blob)
        else:  # a valid zip whose .npy members are damaged
            name = rng.choice(sorted(members))
            bad, what = flip_bytes(rng, members[name])
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                for n, b in members.items():
                    z.writestr(n, bad if n == name else b)
            data, what = buf.getvalue(), f"member {name}: {what}"
        (tmp_path / "d.npz").write_bytes(data)
        argv = ["eval", str(seeds / "tiny.fxq"), "--data", str(tmp_path / "d.npz"), "-q"]
        return argv, ["d.npz"], [], what

    fuzz(capfd, tmp_path, case)
