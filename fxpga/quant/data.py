"""Datasets: scikit-learn's bundled 8×8 digits (no download), the same upscaled to 16×16, or
a user's ``.npz``.

A dataset gives a calibration set (for the greedy format search) and a test set with labels
(for top-1 accuracy). Images are float32, NCHW.
"""

from __future__ import annotations

import hashlib
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FxpgaError
from ..limits import (
    LARGEST_BOARD,
    MAX_DATASET_ELEMENTS,
    MAX_SAMPLES,
    MAX_TENSOR_ELEMENTS,
    check_range,
)

# digits: 1797 images. A fixed permutation (seed 0) splits them into
# test (first 500), calibration (next 256) and training (the remaining 1041).
DIGITS_SPLIT_SEED = 0
DIGITS_TEST = 500
DIGITS_CALIB = 256


@dataclass
class Dataset:
    name: str
    x_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray | None  # None: no labels (an autoencoder's data, say)
    x_train: np.ndarray | None = None
    y_train: np.ndarray | None = None
    note: str = ""

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_test.shape[1:])

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.x_calib, self.x_test, self.y_test):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    @property
    def labelled(self) -> bool:
        return self.y_test is not None

    def check_labels(self, out_shape: tuple[int, ...]):
        """Labels must index the model's outputs (argmax over ``prod(out_shape)`` classes)."""
        if self.y_test is None:
            return
        classes = int(np.prod(out_shape))
        bad = np.flatnonzero((self.y_test < 0) | (self.y_test >= classes))
        if len(bad):
            i = int(bad[0])
            raise FxpgaError(
                f"{self.name}: label y[{i}] = {int(self.y_test[i])} is not a class of the "
                f"model (it has {classes} outputs, labels 0..{classes - 1}); "
                f"{len(bad)} labels are out of range"
            )

    def calib(self, n: int | None) -> np.ndarray:
        if n is None:
            return self.x_calib
        check_range("--calib", n, 1, MAX_SAMPLES, "images")
        return self.x_calib[:n]


def digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(x))
    te = perm[:DIGITS_TEST]
    ca = perm[DIGITS_TEST : DIGITS_TEST + DIGITS_CALIB]
    tr = perm[DIGITS_TEST + DIGITS_CALIB :]
    return Dataset("digits", x[ca], x[te], y[te], x[tr], y[tr])


def digits16() -> Dataset:
    """The same digits and split, upscaled 2× to 16×16 (bilinear, half-pixel centres)."""
    import torch

    d = digits()

    def up(x):
        t = torch.nn.functional.interpolate(
            torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=False
        )
        return t.numpy()

    return Dataset("digits16", up(d.x_calib), up(d.x_test), d.y_test, up(d.x_train), d.y_train)


BUNDLED = {"digits": digits, "digits16": digits16}

NOISE_SEED = 0
NOISE_CALIB, NOISE_TEST = 256, 64


def noise(shape: tuple[int, ...]) -> Dataset:
    """Unlabelled uniform random inputs in [-1, 1) of per-sample ``shape``: the data of the
    hardware-only benchmarks (seeded, the same on every machine)."""
    from ..limits import MAX_TENSOR_ELEMENTS

    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise FxpgaError(
            f"noise: samples of shape {shape} hold more than {MAX_TENSOR_ELEMENTS:,} values"
        )
    rng = np.random.RandomState(NOISE_SEED)
    x = (2 * rng.random_sample((NOISE_CALIB + NOISE_TEST, *shape)) - 1).astype(np.float32)
    name = "noise:" + "x".join(map(str, shape))
    note = "random inputs: a hardware benchmark, the output quality means nothing about accuracy"
    return Dataset(name, x[:NOISE_CALIB], x[NOISE_CALIB:], None, note=note)


def _noise_spec(spec: str) -> tuple[int, ...] | None:
    m = re.fullmatch(r"noise:(\d+(?:x\d+){0,2})", spec)
    if spec.startswith("noise:") and not m:
        raise FxpgaError(f"dataset '{spec}': expected noise:F or noise:CxHxW, e.g. noise:3x32x32")
    return tuple(int(d) for d in m.group(1).split("x")) if m else None


def load_npz(path: str | Path) -> Dataset:
    """``x`` (float32, NCHW or NF), optional ``y`` (integer labels), optional ``x_calib``.

    Without ``x_calib`` the first images of ``x`` calibrate (and are also evaluated). Without
    ``y`` (a model that is not a classifier) the flow reports how close the fixed-point output
    is to the float one (SQNR, max |error|) instead of top-1. The
    arrays' sizes are checked against ``fxpga.limits`` from their ``.npy`` headers, before
    any of their data is read; other arrays in the file are not read.
    """
    p = Path(path)
    if p.is_dir():
        raise FxpgaError(f"{p}: is a directory; --data takes a .npz file with arrays x and y")
    if not p.is_file():
        raise FxpgaError(f"{p}: no such dataset file")
    try:
        with zipfile.ZipFile(p) as zf:
            names = set(zf.namelist())
            for k in ("x", "y", "x_calib"):
                if k in names and f"{k}.npy" not in names:
                    raise FxpgaError(
                        f"{p}: member '{k}' is not a .npy array (an array {k} is the member "
                        f"'{k}.npy', as numpy.savez writes it)"
                    )
            if "x.npy" not in names:
                have = ", ".join(sorted(n.removesuffix(".npy") for n in names)) or "nothing"
                raise FxpgaError(f"{p}: missing array 'x' (has: {have})")
            keys = [k for k in ("x", "y", "x_calib") if f"{k}.npy" in names]
            headers = {k: _npy_header(zf, p, k) for k in keys}  # every size bounded first
            arrays = {k: _npy_data(zf, p, k, *headers[k]) for k in keys}
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as e:
        raise FxpgaError(f"{p}: not a readable .npz file: {e}") from e
    x, y = arrays["x"], arrays.get("y")
    _check_x(p, "x", x)
    if y is not None:
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise FxpgaError(f"{p}: 'y' must be a 1-D integer array, got {y.dtype} {y.shape}")
        if len(y) != len(x):
            raise FxpgaError(f"{p}: 'x' has {len(x)} samples but 'y' has {len(y)}")
        big = np.flatnonzero(y > np.iinfo(np.int64).max) if y.dtype.kind == "u" else ()
        if len(big):  # checked in y's own dtype: the int64 the rest reads would wrap
            i = int(big[0])
            raise FxpgaError(f"{p}: label y[{i}] = {y[i]} is not a class number (too large)")
        y = y.astype(np.int64)
    xc = arrays.get("x_calib")
    note = ""
    if xc is None:
        xc = x
        note = "calibration uses the first images of x (no x_calib given)"
    else:
        _check_x(p, "x_calib", xc)
        if xc.shape[1:] != x.shape[1:]:
            raise FxpgaError(
                f"{p}: 'x_calib' samples are {xc.shape[1:]}, 'x' samples are {x.shape[1:]}"
            )
    return Dataset(p.name, xc.astype(np.float32), x.astype(np.float32), y, note=note)


NPY_HEADER_BYTES = 10_000  # numpy's own limit on a .npy header


def _npy_header(zf: zipfile.ZipFile, p: Path, k: str):
    """Member ``k`` of the dataset ``p``: its ``.npy`` header (version, dtype, shape), checked
    against ``fxpga.limits``, and the offset of its data; no data is decompressed."""
    fmt = np.lib.format
    bad = f"{p}: '{k}' is not a valid .npy array"
    with zf.open(f"{k}.npy") as f:
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f, NPY_HEADER_BYTES)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = fmt.read_array_header_2_0(f, NPY_HEADER_BYTES)
            else:
                raise ValueError(f"format version {version}")
        except Exception as e:  # numpy parses the header with ast/tokenize: any error
            raise FxpgaError(f"{bad} ({str(e).splitlines()[0][:100] if str(e) else e!r})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise FxpgaError(f"{p}: refusing to load '{k}': {dtype} arrays need pickle")
    if dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise FxpgaError(f"{p}: '{k}' must be numbers, not {dtype}")
    shape = tuple(int(d) for d in shape)
    _check_size(p, k, shape)
    return shape, fortran, dtype, offset


def _npy_data(zf: zipfile.ZipFile, p: Path, k: str, shape, fortran, dtype, offset) -> np.ndarray:
    """The array of member ``k`` whose header ``_npy_header`` read: the zip's declared size
    must be the header's plus the data its shape and dtype imply, and only that much is
    decompressed."""
    n = math.prod(shape) * dtype.itemsize
    held = zf.getinfo(f"{k}.npy").file_size - offset
    if held != n:
        raise FxpgaError(
            f"{p}: '{k}' declares {shape} {dtype} ({n:,} bytes) but its zip member holds "
            f"{held:,} bytes of data"
        )
    with zf.open(f"{k}.npy") as f:
        f.read(offset)
        data = f.read(n)
    if len(data) != n:
        raise FxpgaError(f"{p}: '{k}' is cut short ({len(data):,} of {n:,} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def npz_shapes(p: Path) -> dict[str, tuple[int, ...]]:
    """The shape of each array in the ``.npz`` at ``p``, from its ``.npy`` header (no data is
    read); an array whose header cannot be read is left out (``np.load`` then reports it)."""
    fmt = np.lib.format
    out = {}
    with zipfile.ZipFile(p) as zf:
        for name in zf.namelist():
            if not name.endswith(".npy"):
                continue
            try:
                with zf.open(name) as f:
                    v1 = fmt.read_magic(f) == (1, 0)  # 2.0 and 3.0 share a header layout
                    read = fmt.read_array_header_1_0 if v1 else fmt.read_array_header_2_0
                    shape, _, _ = read(f)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile):
                continue
            out[name[: -len(".npy")]] = tuple(int(d) for d in shape)
    return out


def _check_size(p: Path, k: str, shape: tuple[int, ...]):
    """``limits``: samples per array, values per sample, values per array."""
    n = shape[0] if shape else 1
    if n > MAX_SAMPLES:
        raise FxpgaError(
            f"{p}: '{k}' has {n:,} samples, more than {MAX_SAMPLES:,} (ten times MNIST's test set)"
        )
    per = math.prod(shape[1:])
    if k != "y" and per > MAX_TENSOR_ELEMENTS:
        raise FxpgaError(
            f"{p}: '{k}' samples of shape {shape[1:]} hold {per:,} values, more than "
            f"{MAX_TENSOR_ELEMENTS:,} (two 8-bit feature maps that size fill the "
            f"{LARGEST_BOARD}'s block RAM)"
        )
    if n * per > MAX_DATASET_ELEMENTS:
        raise FxpgaError(
            f"{p}: '{k}' holds {n * per:,} values, more than {MAX_DATASET_ELEMENTS:,} "
            f"(1 GiB of float32)"
        )


def _check_x(p: Path, k: str, x: np.ndarray):
    if x.ndim not in (2, 4):
        raise FxpgaError(f"{p}: '{k}' must be NCHW (4-D) or NF (2-D), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise FxpgaError(f"{p}: '{k}' must be floating point, got {x.dtype}")
    if len(x) == 0:
        raise FxpgaError(f"{p}: '{k}' is empty")
    if not np.all(np.isfinite(x)):
        raise FxpgaError(f"{p}: '{k}' has non-finite values")


def load(spec: str) -> Dataset:
    if spec in BUNDLED:
        return BUNDLED[spec]()
    shape = _noise_spec(spec)
    if shape is not None:
        if min(shape) < 1:
            raise FxpgaError(f"dataset '{spec}': every dimension must be at least 1")
        return noise(shape)
    if spec.endswith(".npz") or Path(spec).exists():
        return load_npz(spec)
    raise FxpgaError(
        f"unknown dataset '{spec}': use {', '.join(BUNDLED)}, noise:CxHxW (random inputs), "
        f"or a .npz file with x and y"
    )
