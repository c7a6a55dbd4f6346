"""The ``.fxq`` artifact: schema-versioned JSON beside an ``.npz`` of tensors.

``model.fxq`` (JSON, human-readable and hand-editable as a ``--config``) holds the graph,
shapes, per-layer formats, shifts, accumulator widths, statistics and provenance.
``model.fxq.npz`` holds the integer weights/biases and the folded float weights; the JSON
records its name and sha256.

Loading trusts nothing in either file. Every number is bounded before it is used and every
JSON value must have its type; the ``.npz`` must be a sibling file, is read without pickle,
must match the recorded sha256, and each array's ``.npy`` header must declare the shape the
JSON's layers imply before any of its data is read. What the hardware and the golden model
derive from the tensors (shifts, integer ranges, accumulator bounds and widths) is computed
again with the quantizer's own rules, and a recorded value that disagrees is refused. Every
problem is a one-line ``FxpgaError`` naming the file, the layer and the field.

Saving keeps the pair loadable at every instant: both files are written to temporary files
first; the tensors the current ``.fxq`` records are moved aside to ``model.fxq.<sha>.npz``
(their sha256's first 16 digits, where ``load`` also looks) before the new ones take their
place, then the JSON is replaced, then the moved-aside tensors are removed. A failure or an
interrupt removes the temporary files and puts the old tensors back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import secrets
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import FxpgaError
from ..limits import MAX_TENSOR_ELEMENTS, MAX_WEIGHTS
from . import frontend, golden, ir
from .qformat import QFormat, check_bits, signed_width
from .qmodel import QLayer, QModel
from .quantizer import MAX_FL, SCHEMES, _acc_bound, _merge_range, _passthrough

SCHEMA = "fxpga.qmodel"
SCHEMA_VERSION = 2  # 2: layers name their inputs (a DAG); add and concat
READS = (1, 2)  # version 1 files are chains

# ---- bounds on what an .fxq may hold (with fxpga.limits)
MAX_JSON_BYTES = 16 << 20  # an .fxq's JSON: about 1 KB a layer, so 4,096 layers take 4 MB
MAX_LAYERS = 4096  # sixteen times the 256 ops an engine program holds (limits.MAX_OPS)
MAX_NAME_CHARS = 1024  # a layer name (ONNX node names are paths, rarely 100 characters)
MAX_PADDING = 1024  # a conv's or pool's padding on one side, and each of a Pad's pads
# a conv's or pool's padded input (what the golden model pads before windowing): twice a
# layer's output at most, which a border of any ordinary padding stays far below
MAX_PADDED_ELEMENTS = 2 * MAX_TENSOR_ELEMENTS
MAX_CLIP = 2.0**96  # |a clip bound|: a format's values lie within ±2^95 (32 bits, fl −64)
MAX_HOST_OPS = 16  # ops in host_tail
MAX_STATS = 64  # entries in a layer's stats
NPY_HEADER_BYTES = 10_000  # numpy's own limit on a .npy header (read_array_header_*)
NPZ_MEMBER_SLACK = 4096  # a member's .npy header and zip headers, beyond its data
NPZ_SLACK = 64 << 10  # the zip's central directory and end records

TOP_FIELDS = (
    "schema",
    "schema_version",
    "fxpga",
    "scheme",
    "input",
    "output",
    "host_tail",
    "max_acc_bits",
    "layers",
    "tensors",
    "provenance",
    "accuracy",
)
COMMON_FIELDS = ("name", "op", "source", "in_shape", "out_shape", "attrs", "inputs")
# per kind of layer: (required fields, optional fields) besides COMMON_FIELDS
KIND_FIELDS = {
    "weighted": (
        ("input", "weight", "output", "shift", "acc_bits", "acc_range", "out_range"),
        ("in_range", "stats"),
    ),
    "merge": (("input_formats", "output", "in_ranges", "out_range"), ("stats",)),
    "keep": (("format", "out_range"), ("in_range",)),
}
# per op: (required attrs, optional attrs)
OP_ATTRS = {
    "conv": (("kernel", "stride", "padding"), ("groups",)),
    "maxpool": (("kernel", "stride", "padding"), ()),
    "avgpool": (("kernel", "stride", "padding"), ()),
    "pad": (("pads",), ()),
    "clip": (("lo", "hi"), ()),
}
# provenance fields fxpga reads as strings (the others are free-form)
PROVENANCE_STRINGS = ("model", "dataset", "dataset_sha256", "model_sha256", "config", "fxpga")
STAT_WORDS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}  # non-finite stats as JSON


def tensors_path(path: Path) -> Path:
    """Where ``save`` writes the tensors of the ``.fxq`` at ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".npz")


def aside_path(tpath: Path, sha: str) -> Path:
    """Where ``save`` moves the tensors file ``tpath`` of sha256 ``sha`` while it replaces it."""
    stem = tpath.name[: -len(".npz")] if tpath.name.endswith(".npz") else tpath.name
    return tpath.with_name(f"{stem}.{sha[:16]}.npz")


def _fmt(f: QFormat | None):
    return None if f is None else f.to_json()


def _weight_fmt(la: QLayer) -> dict:
    """A weight format; with a format per output channel, ``fl`` lists them in order."""
    if la.per_channel:
        return {"bits": la.w_fmt.bits, "fl": list(la.w_fls)}
    return la.w_fmt.to_json()


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
                    "weight": _weight_fmt(la),
                    "output": _fmt(la.out_fmt),
                    "shift": [int(v) for v in la.shifts] if la.per_channel else la.shift,
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


# ---- saving


def check_destination(path: str | Path):
    """That ``save`` can write ``path`` and its tensors file: both names free for a regular
    file, in a writable directory (``save`` checks it before writing anything)."""
    path = Path(path)
    tpath = tensors_path(path)
    parent = path.parent
    if not parent.is_dir():
        raise FxpgaError(f"{path}: directory '{parent}' does not exist")
    for p in (path, tpath):
        if p.is_dir():
            raise FxpgaError(f"{p}: is a directory; the .fxq and its tensors are files")
        if p.exists() and not p.is_file():
            raise FxpgaError(f"{p}: exists and is not a regular file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FxpgaError(f"{path}: directory '{parent}' is not writable")


def _recorded_sha(path: Path, tpath: Path) -> str | None:
    """The sha256 the ``.fxq`` now at ``path`` records for ``tpath``, if it names that file."""
    if not path.is_file():
        return None
    try:
        obj = read_json(path)
    except FxpgaError:
        return None
    t = obj.get("tensors") if isinstance(obj, dict) else None
    if not isinstance(t, dict) or t.get("file", tpath.name) != tpath.name:
        return None
    sha = t.get("sha256")
    return sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) else None


def _write_temp(dest: Path, data: bytes, temps: list[Path]):
    """Write ``data`` to a new temporary file beside ``dest`` (with the permissions the umask
    gives a new file), recorded in ``temps`` as soon as it exists."""
    while True:
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        temps.append(tmp)
        break
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def save(qm: QModel, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``qm`` as ``path`` and its tensors file; see the module docstring for the order
    that keeps the pair loadable. A file system error is a one-line ``FxpgaError``."""
    path = Path(path)
    tpath = tensors_path(path)
    check_destination(path)
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
    text = dumps(to_json(qm, tpath.name, sha, extra)) + "\n"
    old_sha = _recorded_sha(path, tpath)
    aside = aside_path(tpath, old_sha) if old_sha else None
    temps: list[Path] = []
    moved = False  # the old tensors are at `aside`
    target = tpath
    try:
        tmp_npz = _write_temp(tpath, blob, temps)
        target = path
        tmp_json = _write_temp(path, text.encode(), temps)
        target = tpath
        if aside is not None and tpath.is_file() and not aside.exists():
            os.replace(tpath, aside)
            moved = True
        os.replace(tmp_npz, tpath)
        temps.remove(tmp_npz)
        target = path
        os.replace(tmp_json, path)
        temps.remove(tmp_json)
    except BaseException as e:
        for t in temps:
            _remove(t)
        if moved:  # the old .fxq still records them (load also finds them at `aside`)
            with contextlib.suppress(OSError):
                os.replace(aside, tpath)
        if isinstance(e, OSError):
            raise FxpgaError(f"{target}: cannot write: {e.strerror or e}") from e
        raise
    if aside is not None:
        _remove(aside)
    return path


def _remove(p: Path):
    """Remove a file save wrote; one that cannot be removed is left (the pair is consistent)."""
    with contextlib.suppress(OSError):
        p.unlink()


# ---- loading: the JSON


def read_json(path: str | Path) -> dict:
    """A JSON file of at most ``MAX_JSON_BYTES``; every way it can be unreadable is a one-line
    ``FxpgaError``."""
    path = Path(path)
    if not path.is_file():
        raise FxpgaError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise FxpgaError(f"{path}: cannot read: {e.strerror or e}") from e
    if len(data) > MAX_JSON_BYTES:
        raise FxpgaError(f"{path}: more than {MAX_JSON_BYTES:,} bytes, too large for a JSON file")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FxpgaError(f"{path}: not a text JSON file") from e
    except json.JSONDecodeError as e:
        raise FxpgaError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
    except RecursionError as e:
        raise FxpgaError(f"{path}: invalid JSON: nested too deep") from e
    except ValueError as e:  # an integer literal of more digits than Python converts
        raise FxpgaError(f"{path}: invalid JSON: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _show(v) -> str:
    """A JSON value for an error message, cut to one short line."""
    try:
        s = json.dumps(v)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _need(obj: dict, key: str, where: str):
    if key not in obj:
        raise FxpgaError(f"{where}: missing field '{key}'")
    return obj[key]


def _obj(v, what: str) -> dict:
    if not isinstance(v, dict):
        raise FxpgaError(f"{what} must be an object, not {_show(v)}")
    return v


def _list(v, what: str, lo: int, hi: int) -> list:
    if not isinstance(v, list):
        raise FxpgaError(f"{what} must be a list, not {_show(v)}")
    if not lo <= len(v) <= hi:
        n = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise FxpgaError(f"{what} must have {n} entries, not {len(v)}")
    return v


def _int(v, what: str, lo: int, hi: int) -> int:
    """``limits.check_range``'s rule, with a long value cut short in the message."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise FxpgaError(f"{what} must be an integer in {lo}..{hi}, not {_show(v)}")
    if not lo <= v <= hi:
        raise FxpgaError(f"{what} must be in {lo}..{hi}, not {_show(v)}")
    return v


def _any_int(v, what: str) -> int:
    """An integer that is only compared with a computed one."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise FxpgaError(f"{what} must be an integer, not {_show(v)}")
    return v


def _str(v, what: str, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str):
        kind = "a string or null" if optional else "a string"
        raise FxpgaError(f"{what} must be {kind}, not {_show(v)}")
    return v


def _qf(obj, where: str, signed_only: bool = False) -> QFormat:
    if not isinstance(obj, dict) or not {"bits", "fl"} <= set(obj) <= {"bits", "fl", "signed"}:
        raise FxpgaError(
            f'{where}: expected a format {{"bits": B, "fl": F}} or {{"bits": B, "fl": F, '
            f'"signed": false}}, got {_show(obj)}'
        )
    bits = check_bits(obj["bits"], where)
    fl = _int(obj["fl"], f"{where}: fl", -MAX_FL, MAX_FL)
    signed = obj.get("signed", True)
    if not isinstance(signed, bool):
        raise FxpgaError(f"{where}: signed must be true or false, not {_show(signed)}")
    if signed_only and not signed:
        raise FxpgaError(f'{where}: weights are signed ("signed": false is for activations)')
    return QFormat(bits, fl, signed)


def _weight_qf(obj, out_shape, where: str) -> tuple[QFormat, tuple[int, ...] | None]:
    """A weight format, and with ``"fl"`` a list, one fl per output channel (their minimum is
    the format's)."""
    if not (isinstance(obj, dict) and isinstance(obj.get("fl"), list)):
        return _qf(obj, where, signed_only=True), None
    if set(obj) != {"bits", "fl"}:
        raise FxpgaError(
            f'{where}: expected {{"bits": B, "fl": [F, ...]}} (one fl per output channel), '
            f"got {_show(obj)}"
        )
    n = out_shape[0] if isinstance(out_shape, list) and out_shape else None
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_TENSOR_ELEMENTS:
        raise FxpgaError(f"{where}: a per-channel fl needs a valid out_shape")
    fls = _list(obj["fl"], f"{where}: fl (one per output channel)", n, n)
    fls = tuple(_int(f, f"{where}: fl[{k}]", -MAX_FL, MAX_FL) for k, f in enumerate(fls))
    return QFormat(check_bits(obj["bits"], where), min(fls)), fls


def _shape(v, what: str) -> tuple[int, ...]:
    """A per-sample shape, (F,) or (C, H, W), of at most ``MAX_TENSOR_ELEMENTS`` values."""
    _list(v, what, 1, 3)
    for d in v:
        _int(d, what, 1, MAX_TENSOR_ELEMENTS)
    return frontend.check_input_shape(v, what)


def _pair(v, what: str, lo: int, hi: int) -> tuple[int, int]:
    _list(v, what, 2, 2)
    return tuple(_int(d, what, lo, hi) for d in v)


def _range(v, what: str) -> tuple[int, int]:
    _list(v, what, 2, 2)
    return tuple(_any_int(d, what) for d in v)


def _stats(v, what: str) -> dict:
    _obj(v, what)
    if len(v) > MAX_STATS:
        raise FxpgaError(f"{what} must have at most {MAX_STATS} entries, not {len(v)}")
    out = {}
    for k, x in v.items():
        if isinstance(x, str) and x in STAT_WORDS:
            x = STAT_WORDS[x]
        elif isinstance(x, bool) or not isinstance(x, int | float):
            raise FxpgaError(f"{what}.{k} must be a number, not {_show(x)}")
        out[k] = x
    return out


def _provenance(v, where: str) -> dict:
    """Where the model came from: free-form, but the fields fxpga reads have their types."""
    _obj(v, f"{where}: provenance")
    for k in PROVENANCE_STRINGS:
        _str(v.get(k), f"{where}: provenance.{k}", optional=True)
    if v.get("calib_images") is not None:
        _int(v["calib_images"], f"{where}: provenance.calib_images", 0, 1 << 62)
    if "widths" in v:
        w = _obj(v["widths"], f"{where}: provenance.widths")
        for k, bits in w.items():
            if bits is not None:
                check_bits(bits, f"{where}: provenance.widths.{k}")
    return v


def _attrs(e: dict, op: str, where: str) -> dict:
    """The op's attributes, typed and bounded."""
    a = _obj(e.get("attrs", {}), f"{where}: attrs")
    required, optional = OP_ATTRS.get(op, ((), ()))
    unknown = set(a) - set(required) - set(optional)
    if unknown:
        raise FxpgaError(f"{where}: unknown attrs {', '.join(sorted(unknown))} for a {op}")
    for k in required:
        _need(a, k, f"{where}: attrs")
    out = {}
    if op in ("conv", "maxpool", "avgpool"):
        # no dimension holds more than MAX_TENSOR_ELEMENTS values
        out["kernel"] = _pair(a["kernel"], f"{where}: attrs.kernel", 1, MAX_TENSOR_ELEMENTS)
        out["stride"] = _pair(a["stride"], f"{where}: attrs.stride", 1, MAX_TENSOR_ELEMENTS)
        out["padding"] = _pair(a["padding"], f"{where}: attrs.padding", 0, MAX_PADDING)
    if op == "conv":
        out["groups"] = _int(a.get("groups", 1), f"{where}: attrs.groups", 1, MAX_TENSOR_ELEMENTS)
    elif op == "pad":
        pads = _list(a["pads"], f"{where}: attrs.pads ([left, right, top, bottom])", 4, 4)
        out["pads"] = tuple(_int(v, f"{where}: attrs.pads", 0, MAX_PADDING) for v in pads)
    elif op == "clip":
        for k in ("lo", "hi"):
            v = a[k]
            if v is not None and (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or not math.isfinite(v)
                or abs(v) > MAX_CLIP
            ):
                raise FxpgaError(
                    f"{where}: attrs.{k} must be null or a number within ±2^96, not {_show(v)}"
                )
            out[k] = v
    return out


def _kind(op: str) -> str:
    cls = ir.OPS[op]
    return "weighted" if cls.has_weights else ("merge" if cls.arity is None else "keep")


def _entry(path: Path, i: int, e) -> dict:
    """One layer's JSON entry, every field typed and bounded (nothing is built yet)."""
    _obj(e, f"{path}: layers[{i}]")
    name = e.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
        raise FxpgaError(
            f"{path}: layers[{i}].name must be a string of 1..{MAX_NAME_CHARS} characters, "
            f"not {_show(name)}"
        )
    where = f"{path}: layer '{name}'"
    op = e.get("op")
    if not isinstance(op, str) or op not in ir.OPS or op == "batchnorm":
        raise FxpgaError(f"{where}: unknown op {_show(op)}")
    kind = _kind(op)
    required, optional = KIND_FIELDS[kind]
    unknown = set(e) - set(COMMON_FIELDS) - set(required) - set(optional)
    if unknown:
        raise FxpgaError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} for a {op}")
    for k in ("in_shape", "out_shape", *required):
        _need(e, k, where)
    inputs = _list(e.get("inputs", []), f"{where}: inputs", 0, MAX_LAYERS + 1)
    for x in inputs:
        if not isinstance(x, str) or len(x) > MAX_NAME_CHARS:
            raise FxpgaError(f"{where}: inputs must be a list of layer names, not {_show(inputs)}")
    s = {
        "name": name,
        "op": op,
        "kind": kind,
        "where": where,
        "source": _str(e.get("source"), f"{where}: source", optional=True),
        "inputs": tuple(inputs),
        "in_shape": _shape(e["in_shape"], f"{where}: in_shape"),
        "out_shape": _shape(e["out_shape"], f"{where}: out_shape"),
        "attrs": _attrs(e, op, where),
        "stats": _stats(e.get("stats", {}), f"{where}: stats"),
        "out_range": _range(e["out_range"], f"{where}: out_range"),
    }
    if kind == "weighted":
        s["in_fmt"] = _qf(e["input"], f"{where}: input")
        s["w_fmt"], s["w_fls"] = _weight_qf(e["weight"], e["out_shape"], f"{where}: weight")
        s["out_fmt"] = _qf(e["output"], f"{where}: output")
        if s["w_fls"] is None:
            s["shift"] = _any_int(e["shift"], f"{where}: shift")
        else:
            n = len(s["w_fls"])
            shifts = _list(e["shift"], f"{where}: shift (one per output channel)", n, n)
            s["shift"] = [_any_int(v, f"{where}: shift[{k}]") for k, v in enumerate(shifts)]
        s["acc_bits"] = _any_int(e["acc_bits"], f"{where}: acc_bits")
        s["acc_range"] = _range(e["acc_range"], f"{where}: acc_range")
        if "in_range" in e:
            s["in_range"] = _range(e["in_range"], f"{where}: in_range")
        s["tensors"] = _weight_shapes(s)
    elif kind == "merge":
        fmts = _list(e["input_formats"], f"{where}: input_formats", 2, MAX_LAYERS + 1)
        s["in_fmts"] = tuple(_qf(f, f"{where}: input_formats[{k}]") for k, f in enumerate(fmts))
        rs = _list(e["in_ranges"], f"{where}: in_ranges", 2, MAX_LAYERS + 1)
        s["in_ranges"] = tuple(_range(r, f"{where}: in_ranges[{k}]") for k, r in enumerate(rs))
        if not len(fmts) == len(rs) == len(inputs):
            raise FxpgaError(f"{where}: needs a format and a range per input")
        s["out_fmt"] = _qf(e["output"], f"{where}: output")
    else:
        s["out_fmt"] = _qf(e["format"], f"{where}: format")
        if "in_range" in e:
            s["in_range"] = _range(e["in_range"], f"{where}: in_range")
    return s


def _weight_shapes(s: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """The arrays a conv/linear entry implies: name → (shape, dtype kind)."""
    where, (o, *_), (i, *_) = s["where"], s["out_shape"], s["in_shape"]
    if s["op"] == "conv":
        for k in ("in_shape", "out_shape"):
            if len(s[k]) != 3:
                raise FxpgaError(f"{where}: {k} must be (C, H, W) for a conv, not {list(s[k])}")
        g = s["attrs"]["groups"]
        if i % g or o % g:
            raise FxpgaError(
                f"{where}: attrs.groups {g} does not divide its {i} input and {o} output channels"
            )
        w = (o, i // g, *s["attrs"]["kernel"])
    else:
        for k in ("in_shape", "out_shape"):
            if len(s[k]) != 1:
                raise FxpgaError(f"{where}: {k} must be (F,) for a linear, not {list(s[k])}")
        w = (o, i)
    n = s["name"]
    return {
        f"{n}.w": (w, "i"),
        f"{n}.b": ((o,), "i"),
        f"{n}.w_float": (w, "f"),
        f"{n}.b_float": ((o,), "f"),
    }


# ---- loading: the tensors


def _tensors_file(path: Path, obj: dict) -> tuple[Path, str]:
    """The recorded tensors file, which must be a sibling of ``path``, and its sha256."""
    t = _obj(_need(obj, "tensors", str(path)), f"{path}: tensors")
    name = t.get("file", tensors_path(path).name)
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or os.path.basename(name) != name
        or any(c in name for c in "/\\\0:")
        or not name.endswith(".npz")
    ):
        raise FxpgaError(
            f"{path}: tensors.file must be the name of an .npz beside it (no directory), "
            f"not {_show(name)}"
        )
    sha = t.get("sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise FxpgaError(f"{path}: tensors.sha256 must be 64 hex digits, not {_show(sha)}")
    return path.with_name(name), sha


def _read_blob(path: Path, tpath: Path, sha: str, limit: int) -> tuple[Path, bytes]:
    """The bytes of the tensors file of sha256 ``sha``: ``tpath``, or where ``save`` moves
    it aside while replacing it. At most ``limit`` bytes are read."""
    found = None
    for p in (tpath, aside_path(tpath, sha)):
        if not p.is_file():
            continue
        found = found or p
        try:
            size = p.stat().st_size
            if size > limit:
                raise FxpgaError(
                    f"{p}: {size:,} bytes, more than the tensors {path.name} declares take "
                    f"({limit:,} bytes at most)"
                )
            with open(p, "rb") as f:
                blob = f.read(limit + 1)
        except OSError as e:
            raise FxpgaError(f"{p}: cannot read: {e.strerror or e}") from e
        if len(blob) <= limit and hashlib.sha256(blob).hexdigest() == sha:
            return p, blob
    if found is None:
        raise FxpgaError(f"{path}: its tensor file '{tpath}' is missing")
    raise FxpgaError(f"{found}: sha256 does not match the one recorded in {path.name}")


def _read_member(zf: zipfile.ZipFile, p: Path, k: str, shape, kind: str, fxq: str):
    """Array ``k`` of the zip ``zf`` (the file ``p``): its ``.npy`` header must declare
    ``shape`` and a dtype of ``kind`` before any of its data is read."""
    fmt = np.lib.format
    with zf.open(k + ".npy") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            got, fortran, dtype = fmt.read_array_header_1_0(f, NPY_HEADER_BYTES)
        elif version == (2, 0):
            got, fortran, dtype = fmt.read_array_header_2_0(f, NPY_HEADER_BYTES)
        else:
            raise ValueError(f".npy format version {version} is not 1.0 or 2.0")
        if dtype.hasobject or dtype.kind != kind or dtype.itemsize > 8:
            what = "integer" if kind == "i" else "floating point"
            raise FxpgaError(f"{p}: '{k}' must be {what} of at most 64 bits, not {dtype}")
        if tuple(got) != shape:
            raise FxpgaError(f"{p}: '{k}' has shape {tuple(got)}, {fxq} declares {shape}")
        n = math.prod(shape) * dtype.itemsize
        data = f.read(n)
    if len(data) != n:
        raise FxpgaError(f"{p}: '{k}' is cut short ({len(data):,} of {n:,} bytes)")
    a = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    a = a.astype(np.int64 if kind == "i" else np.float64)
    if kind == "f" and not np.all(np.isfinite(a)):
        raise FxpgaError(f"{p}: '{k}' has non-finite values")
    return a


def _read_tensors(path: Path, tpath: Path, sha: str, want: dict) -> dict[str, np.ndarray]:
    """The arrays ``want`` (name → (shape, dtype kind)) and nothing else: the file may hold
    no other."""
    limit = NPZ_SLACK + sum(
        8 * math.prod(shape) + NPZ_MEMBER_SLACK + 2 * len(k) for k, (shape, _) in want.items()
    )
    p, blob = _read_blob(path, tpath, sha, limit)
    arrays = {}
    k = None
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            names = {i.filename for i in zf.infolist()}
            extra = sorted(names - {m + ".npy" for m in want})
            if extra:
                raise FxpgaError(f"{p}: holds {_show(extra[0])}, which no layer of {path.name} has")
            for k, (shape, kind) in want.items():
                if k + ".npy" not in names:
                    raise FxpgaError(f"{p}: has no array '{k}' (layer '{k.rsplit('.', 1)[0]}')")
                arrays[k] = _read_member(zf, p, k, shape, kind, path.name)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        at = f" '{k}'" if k else ""
        raise FxpgaError(f"{p}: refusing to load{at}: {_first_line(e)}") from e
    except (NotImplementedError, RuntimeError) as e:  # a compression or encryption zipfile lacks
        raise FxpgaError(f"{p}: refusing to load: {_first_line(e)}") from e
    except (tokenize.TokenError, SyntaxError) as e:  # a .npy header numpy cannot parse
        raise FxpgaError(f"{p}: refusing to load '{k}': its .npy header: {_first_line(e)}") from e
    return arrays


# ---- loading: the model


def _node(s: dict, arrays: dict) -> ir.Node:
    name, a = s["name"], s["attrs"]
    kw = {"source": s["source"], "inputs": s["inputs"]}
    op = s["op"]
    if op in ("conv", "linear"):
        kw.update(weight=arrays[f"{name}.w_float"], bias=arrays[f"{name}.b_float"])
        if op == "conv":
            kw.update(stride=a["stride"], padding=a["padding"], groups=a["groups"])
    elif op in ("maxpool", "avgpool"):
        kw.update(kernel=a["kernel"], stride=a["stride"], padding=a["padding"])
    elif op == "pad":
        kw.update(pads=a["pads"])
    elif op == "clip":
        kw.update(lo=a["lo"], hi=a["hi"])
    return ir.OPS[op](name, **kw)


def _layer(s: dict, node: ir.Node, arrays: dict) -> QLayer:
    """The layer as recorded; its ranges are checked by ``_check_derived``."""
    where, out_range = s["where"], s["out_range"]
    if s["kind"] == "merge":
        la = QLayer(
            node,
            s["in_fmts"][0],
            s["out_fmt"],
            s["in_ranges"][0],
            out_range,
            in_fmts=s["in_fmts"],
            in_ranges=s["in_ranges"],
            stats=s["stats"],
        )
    elif s["kind"] == "weighted":
        w, b = arrays[f"{node.name}.w"], arrays[f"{node.name}.b"]
        la = QLayer(
            node,
            s["in_fmt"],
            s["out_fmt"],
            s.get("in_range", (0, 0)),
            out_range,
            w_fmt=s["w_fmt"],
            w=w,
            b=b,
            acc_range=s["acc_range"],
            acc_bits=s["acc_bits"],
            stats=s["stats"],
            w_fls=s["w_fls"],
        )
        if w.size and (w.min() < la.w_fmt.qmin or w.max() > la.w_fmt.qmax):
            raise FxpgaError(f"{where}: weights exceed the {la.w_fmt} range")
        if s["w_fls"] is not None and not la.per_channel:
            raise FxpgaError(
                f"{where}: weight fl lists one value for every channel; write it as one integer"
            )
        want = [int(v) for v in la.shifts] if la.per_channel else la.shift
        if s["shift"] != want:
            raise FxpgaError(
                f"{where}: shift {_show(s['shift'])} disagrees with the formats (expected "
                f"{_show(want)})"
            )
    else:
        la = QLayer(node, s["out_fmt"], s["out_fmt"], s.get("in_range", (0, 0)), out_range)
    return la


def _check_derived(path: Path, qm: QModel, specs: list[dict]):
    """Recompute each layer's integer ranges and accumulator bound and width from its tensors
    and formats with the quantizer's rules, in graph order; refuse a recorded value that
    disagrees, and keep the computed ones."""
    ranges = {ir.INPUT: (qm.input_fmt.qmin, qm.input_fmt.qmax)}
    for la, s in zip(qm.layers, specs, strict=True):
        node = la.node
        ins = tuple(ranges[i] for i in node.inputs)
        from_input = (ins[0], "the out_range of its input")
        if s["kind"] == "weighted":
            acc = _acc_bound(la.w, la.b, *ins[0])
            out = (la.out_fmt.qmin, la.out_fmt.qmax)
            why = "its weights, bias and input range"
            want = {
                "in_range": from_input,
                "acc_range": (acc, why),
                "acc_bits": (signed_width(*acc), why),
                "out_range": (out, "its output format"),
            }
            la.acc_range, la.acc_bits = acc, want["acc_bits"][0]
        elif s["kind"] == "merge":
            aligned = [
                tuple(int(v) for v in golden.align(np.array(r), f, la.out_fmt))
                for r, f in zip(ins, la.in_fmts, strict=True)
            ]
            out = _merge_range(node, aligned, la.out_fmt)
            want = {
                "in_ranges": (ins, "the out_range of its inputs"),
                "out_range": (out, "its formats and input ranges"),
            }
        else:
            try:
                out = _passthrough(node, la.in_fmt, ins[0]).out_range
            except FxpgaError as e:
                raise FxpgaError(f"{path}: {e}") from e
            want = {"in_range": from_input, "out_range": (out, f"its input range and {node.op}")}
        for k, (v, why) in want.items():
            if k in s and s[k] != v:
                raise FxpgaError(
                    f"{s['where']}: {k} {_show(s[k])} disagrees with {why} (expected {_show(v)})"
                )
        la.in_range, la.in_ranges, la.out_range = ins[0], ins, out
        ranges[la.name] = out


def _check_shapes(path: Path, graph: ir.Graph, specs: list[dict]):
    """The recorded shapes are the inferred ones, within the frontend's sizes, and no padded
    input exceeds ``MAX_PADDED_ELEMENTS``."""
    for node, s in zip(graph.nodes, specs, strict=True):
        for k in ("in_shape", "out_shape"):
            if getattr(node, k) != s[k]:
                raise FxpgaError(
                    f"{s['where']}: {k} {list(s[k])} disagrees with the graph "
                    f"(expected {list(getattr(node, k))})"
                )
    try:
        frontend.check_sizes(graph)
    except FxpgaError as err:
        raise FxpgaError(f"{path}: {err}") from err
    for node in graph.nodes:
        if isinstance(node, ir.Conv | ir.MaxPool | ir.AvgPool):
            (c, h, w), (ph, pw) = node.in_shape, node.padding
            size = c * (h + 2 * ph) * (w + 2 * pw)
            if size > MAX_PADDED_ELEMENTS:
                raise FxpgaError(
                    f"{path}: layer '{node.name}': its input padded by attrs.padding holds "
                    f"{size:,} values, more than {MAX_PADDED_ELEMENTS:,}"
                )


def load(path: str | Path) -> QModel:
    """Load an ``.fxq`` and its tensors; every inconsistency is a one-line ``FxpgaError``."""
    path = Path(path)
    obj = read_json(path)
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise FxpgaError(f"{path}: not an fxpga quantized model (schema '{SCHEMA}' expected)")
    version = obj.get("schema_version")
    if isinstance(version, bool) or version not in READS:
        raise FxpgaError(
            f"{path}: schema version {_show(version)} is not "
            f"supported (this fxpga reads {', '.join(map(str, READS))})"
        )
    unknown = set(obj) - set(TOP_FIELDS)
    if unknown:
        raise FxpgaError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    where = str(path)
    tpath, sha = _tensors_file(path, obj)
    inp = _obj(_need(obj, "input", where), f"{path}: input")
    input_shape = _shape(_need(inp, "shape", f"{path}: input"), f"{path}: input.shape")
    input_fmt = _qf(_need(inp, "format", f"{path}: input"), f"{path}: input.format")
    entries = _list(_need(obj, "layers", where), f"{path}: layers", 1, MAX_LAYERS)
    tail = _list(obj.get("host_tail", []), f"{path}: host_tail", 0, MAX_HOST_OPS)
    if any(not isinstance(t, str) or t not in ir.HOST_OPS for t in tail):
        raise FxpgaError(
            f"{path}: host_tail must list ops of {', '.join(ir.HOST_OPS)}, not {_show(tail)}"
        )
    scheme = obj.get("scheme", "dynamic")
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise FxpgaError(
            f"{path}: scheme must be one of {', '.join(map(repr, SCHEMES))}, not {_show(scheme)}"
        )
    _str(obj.get("fxpga"), f"{path}: fxpga", optional=True)
    if "accuracy" in obj:
        _obj(obj["accuracy"], f"{path}: accuracy")
    provenance = _provenance(obj.get("provenance", {}), where)

    specs = [_entry(path, i, e) for i, e in enumerate(entries)]
    seen = {ir.INPUT}
    for s in specs:
        if s["name"] in seen:
            what = "the graph input's name" if s["name"] == ir.INPUT else "a duplicate layer name"
            raise FxpgaError(f"{s['where']}: '{s['name']}' is {what}")
        seen.add(s["name"])
    want = {k: v for s in specs for k, v in s.get("tensors", {}).items()}
    weights = sum(math.prod(shape) for k, (shape, kind) in want.items() if kind == "i")
    if weights > MAX_WEIGHTS:
        raise FxpgaError(
            f"{path}: its layers declare {weights:,} weights and biases, more than "
            f"{MAX_WEIGHTS:,} (the largest board's block RAM holds that many 2-bit words)"
        )
    arrays = _read_tensors(path, tpath, sha, want)

    nodes = [_node(s, arrays) for s in specs]
    try:
        graph = ir.Graph(input_shape, nodes, tuple(tail))
    except FxpgaError as err:
        raise FxpgaError(f"{path}: {err}") from err
    _check_shapes(path, graph, specs)
    layers = [_layer(s, node, arrays) for s, node in zip(specs, nodes, strict=True)]
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
    qm = QModel(graph, input_fmt, layers, scheme=scheme, provenance=provenance)
    _check_derived(path, qm, specs)
    if "max_acc_bits" in obj:
        got = _any_int(obj["max_acc_bits"], f"{path}: max_acc_bits")
        if got != qm.max_acc_bits:
            raise FxpgaError(
                f"{path}: max_acc_bits {got} disagrees with the layers' acc_bits "
                f"(expected {qm.max_acc_bits})"
            )
    if "output" in obj:
        out = _obj(obj["output"], f"{path}: output")
        for k, want_v in (("shape", list(graph.output_shape)), ("format", _fmt(qm.output_fmt))):
            if k in out and out[k] != want_v:
                raise FxpgaError(
                    f"{path}: output.{k} {_show(out[k])} disagrees with the last layer's "
                    f"(expected {_show(want_v)})"
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
