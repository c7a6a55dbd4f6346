"""The ``.fxq`` artifact: schema-versioned JSON beside an ``.npz`` of tensors.

``model.fxq`` (JSON, human-readable and hand-editable as a ``--config``) holds the graph,
shapes, per-layer formats, shifts, accumulator widths, statistics and provenance.
``model.fxq.npz`` holds the integer weights/biases and the folded float weights; it is loaded
with ``allow_pickle=False`` and its sha256 must match the one recorded in the JSON.
Both are written to temporary files and renamed into place, the JSON last.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import FxpgaError
from . import ir
from .qformat import QFormat
from .qmodel import QLayer, QModel

SCHEMA = "fxpga.qmodel"
SCHEMA_VERSION = 2  # 2: layers name their inputs (a DAG); add and concat
READS = (1, 2)  # version 1 files are chains


def tensors_path(path: Path) -> Path:
    return path.with_name(path.name + ".npz")


def _fmt(f: QFormat | None):
    return None if f is None else f.to_json()


def _num(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    return v


def to_json(qm: QModel, tensors_name: str, tensors_sha: str, extra: dict | None = None) -> dict:
    layers = []
    for la in qm.layers:
        n = la.node
        e = {
            "name": n.name,
            "op": n.op,
            "source": n.source,
            "in_shape": list(n.in_shape),
            "out_shape": list(n.out_shape),
            "attrs": n.attrs(),
            "inputs": list(n.inputs),
        }
        if n.arity is None:  # add, concat: own output format, one format per input
            e.update(
                {
                    "input_formats": [_fmt(f) for f in la.in_fmts],
                    "output": _fmt(la.out_fmt),
                    "in_ranges": [list(r) for r in la.in_ranges],
                    "out_range": list(la.out_range),
                    "stats": {k: _num(v) for k, v in la.stats.items()},
                }
            )
        elif la.w_fmt is not None:
            e.update(
                {
                    "input": _fmt(la.in_fmt),
                    "weight": _fmt(la.w_fmt),
                    "output": _fmt(la.out_fmt),
                    "shift": la.shift,
                    "acc_bits": la.acc_bits,
                    "acc_range": list(la.acc_range),
                    "in_range": list(la.in_range),
                    "out_range": list(la.out_range),
                    "stats": {k: _num(v) for k, v in la.stats.items()},
                }
            )
        else:
            e.update(
                {
                    "format": _fmt(la.out_fmt),
                    "in_range": list(la.in_range),
                    "out_range": list(la.out_range),
                }
            )
        layers.append(e)
    obj = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "fxpga": __version__,
        "scheme": qm.scheme,
        "input": {"shape": list(qm.graph.input_shape), "format": _fmt(qm.input_fmt)},
        "output": {"shape": list(qm.graph.output_shape), "format": _fmt(qm.output_fmt)},
        # applied by the host in float after the integer output (argmax unchanged)
        "host_tail": list(qm.graph.host_tail),
        "max_acc_bits": qm.max_acc_bits,
        "layers": layers,
        "tensors": {"file": tensors_name, "sha256": tensors_sha},
        "provenance": qm.provenance,
    }
    if extra:
        obj.update(extra)
    return obj


def _atomic_write(path: Path, data: bytes) -> str:
    """Write ``data`` to a temp file beside ``path``; return the temp name (caller renames)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def save(qm: QModel, path: str | Path, extra: dict | None = None) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise FxpgaError(f"{path}: directory '{path.parent}' does not exist")
    arrays = {}
    for la in qm.layers:
        if la.w is not None:
            arrays[f"{la.name}.w"] = la.w.astype(np.int64)
            arrays[f"{la.name}.b"] = la.b.astype(np.int64)
            arrays[f"{la.name}.w_float"] = la.node.weight.astype(np.float64)
            arrays[f"{la.name}.b_float"] = la.node.bias.astype(np.float64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blob = buf.getvalue()
    sha = hashlib.sha256(blob).hexdigest()
    tpath = tensors_path(path)
    text = dumps(to_json(qm, tpath.name, sha, extra)) + "\n"
    tmp_npz = _atomic_write(tpath, blob)
    try:
        tmp_json = _atomic_write(path, text.encode())
    except BaseException:
        os.unlink(tmp_npz)
        raise
    os.replace(tmp_npz, tpath)
    os.replace(tmp_json, path)
    return path


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FxpgaError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise FxpgaError(f"{path}: not a text JSON file") from e
    except json.JSONDecodeError as e:
        raise FxpgaError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e


def _qf(obj, where: str) -> QFormat:
    if not isinstance(obj, dict) or "bits" not in obj or "fl" not in obj:
        raise FxpgaError(f'{where}: expected a format {{"bits": B, "fl": F}}, got {obj!r}')
    try:
        return QFormat(obj["bits"], obj["fl"])
    except FxpgaError as e:
        raise FxpgaError(f"{where}: {e}") from e


def load(path: str | Path) -> QModel:
    """Load an ``.fxq`` and its tensors; every inconsistency is a one-line ``FxpgaError``."""
    path = Path(path)
    obj = read_json(path)
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise FxpgaError(f"{path}: not an fxpga quantized model (schema '{SCHEMA}' expected)")
    if obj.get("schema_version") not in READS:
        raise FxpgaError(
            f"{path}: schema version {obj.get('schema_version')!r} is not "
            f"supported (this fxpga reads {', '.join(map(str, READS))})"
        )
    tinfo = obj.get("tensors", {})
    tpath = path.with_name(tinfo.get("file", tensors_path(path).name))
    if not tpath.is_file():
        raise FxpgaError(f"{path}: its tensor file '{tpath}' is missing")
    blob = tpath.read_bytes()
    if hashlib.sha256(blob).hexdigest() != tinfo.get("sha256"):
        raise FxpgaError(f"{tpath}: sha256 does not match the one recorded in {path.name}")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise FxpgaError(f"{tpath}: refusing to load: {e}") from e

    try:
        input_shape = tuple(int(d) for d in obj["input"]["shape"])
        input_fmt = _qf(obj["input"]["format"], f"{path}: input")
        entries = obj["layers"]
    except (KeyError, TypeError) as e:
        raise FxpgaError(f"{path}: missing field {e}") from e

    nodes, layers = [], []
    for e in entries:
        name = e.get("name")
        where = f"{path}: layer '{name}'"
        op = e.get("op")
        if op not in ir.OPS or op == "batchnorm":
            raise FxpgaError(f"{where}: unknown op {op!r}")
        a = e.get("attrs", {})
        inputs = e.get("inputs", [])
        if not (isinstance(inputs, list) and all(isinstance(i, str) for i in inputs)):
            raise FxpgaError(f"{where}: inputs must be a list of layer names, not {inputs!r}")
        src = {"source": e.get("source"), "inputs": tuple(inputs)}
        try:
            if op in ("conv", "linear"):
                w, b = arrays[f"{name}.w_float"], arrays[f"{name}.b_float"]
                kw = {"weight": w, "bias": b}
                if op == "conv":
                    kw.update(stride=tuple(a["stride"]), padding=tuple(a["padding"]))
                    kw.update(groups=int(a.get("groups", 1)))
                node = ir.OPS[op](name, **src, **kw)
            elif op == "pad":
                pads = a["pads"]
                if not (isinstance(pads, list) and len(pads) == 4):
                    raise FxpgaError(f"{where}: pads must be [left, right, top, bottom]")
                if not all(isinstance(v, int) and 0 <= v <= 1024 for v in pads):
                    raise FxpgaError(f"{where}: pads must be integers in 0..1024, not {pads}")
                node = ir.Pad(name, pads=tuple(pads), **src)
            elif op == "clip":
                lo, hi = a["lo"], a["hi"]
                if not all(v is None or isinstance(v, int | float) for v in (lo, hi)):
                    raise FxpgaError(f"{where}: clip bounds must be numbers or null")
                node = ir.Clip(name, lo=lo, hi=hi, **src)
            elif op in ("maxpool", "avgpool"):
                node = ir.OPS[op](
                    name,
                    kernel=tuple(a["kernel"]),
                    stride=tuple(a["stride"]),
                    padding=tuple(a["padding"]),
                    **src,
                )
            else:
                node = ir.OPS[op](name, **src)
        except KeyError as err:
            raise FxpgaError(f"{where}: missing {err}") from err
        nodes.append(node)
    tail = obj.get("host_tail", [])
    if not isinstance(tail, list) or any(t not in ir.HOST_OPS for t in tail):
        raise FxpgaError(
            f"{path}: host_tail must list ops of {', '.join(ir.HOST_OPS)}, not {tail!r}"
        )
    try:
        graph = ir.Graph(input_shape, nodes, tuple(tail))
    except FxpgaError as err:
        raise FxpgaError(f"{path}: {err}") from err

    for node, e in zip(nodes, entries, strict=True):
        where = f"{path}: layer '{node.name}'"
        try:
            in_range = tuple(int(v) for v in e.get("in_range", e.get("in_ranges", [[0, 0]])[0]))
            out_range = tuple(int(v) for v in e["out_range"])
            if node.arity is None:
                in_fmts = [_qf(f, where) for f in e["input_formats"]]
                in_ranges = [tuple(int(v) for v in r) for r in e["in_ranges"]]
                if not len(in_fmts) == len(in_ranges) == len(node.inputs):
                    raise FxpgaError(f"{where}: needs a format and a range per input")
                la = QLayer(
                    node,
                    in_fmts[0],
                    _qf(e["output"], where),
                    in_ranges[0],
                    out_range,
                    in_fmts=in_fmts,
                    in_ranges=in_ranges,
                    stats=e.get("stats", {}),
                )
            elif node.has_weights:
                la = QLayer(
                    node,
                    _qf(e["input"], where),
                    _qf(e["output"], where),
                    in_range,
                    out_range,
                    w_fmt=_qf(e["weight"], where),
                    w=arrays[f"{node.name}.w"],
                    b=arrays[f"{node.name}.b"],
                    acc_range=tuple(int(v) for v in e["acc_range"]),
                    acc_bits=int(e["acc_bits"]),
                    stats=e.get("stats", {}),
                )
                if la.w.shape != node.weight.shape or la.b.shape != (node.weight.shape[0],):
                    raise FxpgaError(f"{where}: integer tensors do not match the weight shape")
                if la.w.min() < la.w_fmt.qmin or la.w.max() > la.w_fmt.qmax:
                    raise FxpgaError(f"{where}: weights exceed the {la.w_fmt} range")
                if e.get("shift") != la.shift:
                    raise FxpgaError(
                        f"{where}: shift {e.get('shift')} disagrees with the "
                        f"formats (expected {la.shift})"
                    )
            else:
                f = _qf(e["format"], where)
                la = QLayer(node, f, f, in_range, out_range)
        except KeyError as err:
            raise FxpgaError(f"{where}: missing {err}") from err
        layers.append(la)
    # formats must agree: each layer's input formats are its inputs' output formats
    fmts = {ir.INPUT: input_fmt}
    for la in layers:
        for i, f in zip(la.node.inputs, la.in_fmts, strict=True):
            if f != fmts[i]:
                what = "the input's format" if i == ir.INPUT else f"the output of '{i}'"
                raise FxpgaError(
                    f"{path}: layer '{la.name}' input format {f} does not match {what}, {fmts[i]}"
                )
        fmts[la.name] = la.out_fmt
    qm = QModel(
        graph,
        input_fmt,
        layers,
        scheme=obj.get("scheme", "dynamic"),
        provenance=obj.get("provenance", {}),
    )
    return qm


def dumps(obj, indent: int = 0) -> str:
    """JSON with objects one key per line and short lists/formats kept on one line."""
    flat = json.dumps(obj)
    if len(flat) <= 60 or not isinstance(obj, dict | list):
        return flat
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list):
        items = [f"{pad}{dumps(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return flat
