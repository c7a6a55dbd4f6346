"""Built-in models: PyTorch definitions with trained float weights shipped in the package.

``digits-cnn``: conv-bn-relu-pool ×2, fc-relu, fc on scikit-learn's 8×8 digits (92k MACs).
``digits-vgg``: a VGG-style net (3×3 convs in pairs, 16-16 / 32-32 / 64 channels, each stage
ending in a 2×2 max pool, then fc-relu, fc) on the same digits upscaled to 16×16 (1.8M MACs).
``digits-resnet``: a small ResNet on the 16×16 digits: a stem conv, then three residual stacks
(16, 32, 64 filters, the last two stride 2 with a 1×1 projection on the skip), global average
pooling, fc (3.1M MACs): residual adds.
``digits-dsnet``: a DS-CNN/MobileNet-style net on the 16×16 digits: a stem conv, four
depthwise-separable blocks (depthwise 3×3-BN-ReLU, pointwise 1×1-BN-ReLU; 32, 64, 64, 128
channels, strides 1, 2, 1, 2), global average pooling, fc (1.0M MACs).

The MLPerf Tiny reference models (``mlperf_tiny``: resnet8, ds-cnn, mobilenet-v1-0.25, fc-ae)
are built in too, as hardware-only benchmarks: their weights and BatchNorm statistics are
seeded random numbers (``seeded_state``), made the same on every machine, and their data is
random inputs (the ``noise`` data set), so their accuracy means nothing.

Training is not bit-reproducible across CPUs and thread counts, so the weights are data: each
model's state_dict lives in ``models/NAME.npz`` (loaded without pickle) beside a manifest,
``models/NAME.json``, that records how it was made (command, seed, epochs, torch version, date,
float top-1) and the sha256 of the ``.npz``. ``builtin`` loads them and never trains;
``train`` (``fxpga train NAME -o FILE.npz``) retrains with the fixed seed and writes the same
pair of files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import FxpgaError
from ..outdir import atomic_write
from ..progress import bar as progress_bar
from . import data, mlperf_tiny

SEED = 1234


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool1(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool2(torch.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = self.drop(torch.relu(self.fc1(x)))
        return self.fc2(x)


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DigitsVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(1, 16),
            *_conv_bn(16, 16),
            nn.MaxPool2d(2),  # 16x16 -> 8x8
            *_conv_bn(16, 32),
            *_conv_bn(32, 32),
            nn.MaxPool2d(2),  # -> 4x4
            *_conv_bn(32, 64),
            nn.MaxPool2d(2),  # -> 2x2
        )
        self.fc1 = nn.Linear(64 * 2 * 2, 64)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class _Stack(nn.Module):
    """Two conv3×3-BN (ReLU between), added to the input or its 1×1 projection, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.skip(x))


class DigitsResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(1, 16))
        self.stacks = nn.Sequential(_Stack(16, 16, 1), _Stack(16, 32, 2), _Stack(32, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)  # 4x4 -> 1x1
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stacks(self.stem(x))), 1))


def _separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cin, 3, stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class DigitsDSNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(1, 32),
            *_separable(32, 32, 1),
            *_separable(32, 64, 2),  # 16x16 -> 8x8
            *_separable(64, 64, 1),
            *_separable(64, 128, 2),  # -> 4x4
            nn.AvgPool2d(4),
        )
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.features(x), 1)))


# name: (class, dataset, training epochs)
BUILTIN = {
    "digits-cnn": (DigitsCNN, "digits", 60),
    "digits-vgg": (DigitsVGG, "digits16", 40),
    "digits-resnet": (DigitsResNet, "digits16", 40),
    "digits-dsnet": (DigitsDSNet, "digits16", 40),
}
# hardware-only: seeded random weights, random inputs (mlperf_tiny.MODELS)
HARDWARE_ONLY = tuple(mlperf_tiny.MODELS)
BUILTIN_NAMES = (*BUILTIN, *HARDWARE_ONLY)


MODELS_DIR = Path(__file__).parent / "models"


def weights_path(name: str) -> Path:
    """The shipped ``.npz`` of built-in model ``name``; its manifest has the suffix ``.json``."""
    return MODELS_DIR / f"{name}.npz"


def _shift_augment(x: torch.Tensor, gen: torch.Generator, s: int = 1) -> torch.Tensor:
    """Random translation by up to ``s`` pixels (zero fill): cheap, label-preserving."""
    n = x.shape[0]
    pad = torch.nn.functional.pad(x, (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=gen)
    h, w = x.shape[2:]
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    idx_n = torch.arange(n)[:, None, None, None]
    return pad[idx_n, torch.zeros_like(idx_n), rows, cols]


MAX_EPOCHS = 1000


def train(name: str, epochs: int | None = None, progress: bool = True) -> nn.Module:
    """Train built-in model ``name`` from scratch with the fixed seed (AdamW, one-cycle
    schedule, shift augmentation of one input pixel per 8 pixels of width) on one thread, so
    that a machine gives the same weights each time (other CPUs may differ in the last bits)."""
    _check_name(name)
    cls, ds_name, default_epochs = BUILTIN[name]
    epochs = epochs or default_epochs
    if not 1 <= epochs <= MAX_EPOCHS:
        raise FxpgaError(f"epochs must be in 1..{MAX_EPOCHS}, not {epochs}")
    ds = data.load(ds_name)
    shift = max(1, ds.sample_shape[-1] // 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(SEED)
            return _fit(cls(), ds, epochs, shift, f"training {name}", progress)
    finally:
        torch.set_num_threads(threads)


def _fit(model, ds, epochs: int, shift: int, desc: str, progress: bool) -> nn.Module:
    gen = torch.Generator().manual_seed(SEED)
    x = torch.from_numpy(ds.x_train)
    y = torch.from_numpy(ds.y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = -(-len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * steps)
    loss_fn = nn.CrossEntropyLoss()
    bar = progress_bar(range(epochs), desc=desc, enabled=progress)
    for _ in bar:
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            xb = _shift_augment(x[idx], gen, shift)
            opt.zero_grad()
            loss = loss_fn(model(xb), y[idx])
            loss.backward()
            opt.step()
            if sched.last_epoch + 1 < sched.total_steps:
                sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def _check_name(name: str, trained: bool = True):
    if trained and name in HARDWARE_ONLY:
        raise FxpgaError(
            f"'{name}' is a hardware-only benchmark with seeded random weights: it has "
            f"no data set here to train on"
        )
    if name not in BUILTIN_NAMES:
        raise FxpgaError(f"unknown built-in model '{name}' (have: {', '.join(BUILTIN_NAMES)})")


SEEDED_SEED = 2016  # the seed of the hardware-only models' weights
# what seeded_state gives for each (state_digest): a check that every machine makes the same
SEEDED_SHA256 = {
    "resnet8": "c7938689aa29d2ea649dd322cf4191fb52a5e7b3c10d9824b090d9382e7a112c",
    "ds-cnn": "f216fbe89271ff01d857a9c8040889cab9ecda691add09e5ee1503fa862ed046",
    "mobilenet-v1-0.25": "2fbd967ef285d6b5d964d0fd371f430d9437bcf47cd1b769be167a92f59f74f2",
    "fc-ae": "29b51d28f9c268befeddd5a4ffc811e915b79aca20d768ddfe2919c9dbeef81f",
}


def seeded_state(model: nn.Module, seed: int = SEEDED_SEED) -> dict[str, torch.Tensor]:
    """Random weights and BatchNorm statistics for ``model``, the same on every machine:
    ``numpy.random.RandomState`` (a frozen stream) draws uniforms, which are scaled exactly.

    Weights are uniform in ±√(6 / fan_in) (He), biases and BN shifts in ±0.1, BN scales in
    [0.5, 1.5], running means in ±0.1 and variances in [0.5, 2]."""
    rng = np.random.RandomState(seed)
    state = {}
    for key, t in model.state_dict().items():
        if not t.is_floating_point():
            state[key] = t.clone()
            continue
        u = rng.random_sample(t.shape)  # [0, 1), exact doubles from integers
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "weight" and t.dim() > 1:
            bound = float(np.sqrt(6.0 / (t[0].numel())))
            v = (2 * u - 1) * bound
        elif leaf in ("weight", "running_var"):  # BN scale, variance
            v = 0.5 + u if leaf == "weight" else 0.5 + 1.5 * u
        else:  # biases, BN shifts, running means
            v = (2 * u - 1) * 0.1
        state[key] = torch.from_numpy(v.astype(np.float32))
    return state


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(np.ascontiguousarray(state[k].numpy()).tobytes())
    return h.hexdigest()


def dataset_of(name: str) -> str:
    """The data set a built-in model is quantized and evaluated on."""
    _check_name(name, trained=False)
    if name in HARDWARE_ONLY:
        shape = mlperf_tiny.MODELS[name][0].input_shape
        return "noise:" + "x".join(map(str, shape))
    return BUILTIN[name][1]


def manifest(name: str) -> dict:
    """How the shipped weights of ``name`` were made (``models/NAME.json``)."""
    _check_name(name)
    p = weights_path(name).with_suffix(".json")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise FxpgaError(f"{p}: cannot read the manifest of '{name}': {e}") from e


def load_state(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A state_dict from an ``.npz`` (no pickle); with ``sha256``, the file must match it."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FxpgaError(f"{path}: cannot read weights: {e}") from e
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise FxpgaError(f"{path}: sha256 differs from its manifest (a damaged or edited file)")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("one array, not an .npz of named tensors")
        with z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise FxpgaError(f"{path}: not a readable weights .npz: {e}") from e
    bad = [
        k for k, a in arrays.items() if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf"
    ]
    if bad:
        raise FxpgaError(f"{path}: not a readable weights .npz: '{bad[0]}' is not a numeric array")
    return {k: torch.from_numpy(a.copy()) for k, a in arrays.items()}


def builtin(name: str, weights: Path | None = None) -> tuple[nn.Module, str]:
    """The built-in model ``name`` in eval mode, and its dataset name.

    Its shipped weights (checked against their manifest's sha256), or ``weights``: an ``.npz``
    that ``fxpga train`` wrote. Nothing is trained.
    """
    _check_name(name, trained=False)
    if name in HARDWARE_ONLY:
        if weights is not None:
            raise FxpgaError(f"'{name}' is a hardware-only benchmark: its weights are seeded")
        model = mlperf_tiny.MODELS[name][0]()
        state = seeded_state(model)
        if state_digest(state) != SEEDED_SHA256[name]:
            raise FxpgaError(
                f"'{name}': the seeded weights differ from the ones fxpga was released with "
                f"(numpy's RandomState stream changed?)"
            )
        model.load_state_dict(state, strict=True)
        return model.eval(), dataset_of(name)
    cls, ds_name, _ = BUILTIN[name]
    model = cls()
    if weights is None:
        path = weights_path(name)
        state = load_state(path, manifest(name)["sha256"])
    else:
        path = Path(weights)
        state = load_state(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise FxpgaError(
            f"{path}: does not fit the '{name}' definition: {lines[-1].rstrip('.')}"
        ) from e
    return model.eval(), ds_name


def save_state(model: nn.Module, path: Path, info: dict) -> dict:
    """Write ``model``'s state_dict to ``path`` (``.npz``) and its manifest beside it
    (``.json``: ``info`` plus torch version, date and the sha256), each atomically."""
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; this is package data
        sha = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        man = {
            **info,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "sha256": sha,
        }
        os.replace(tmp, path)
        atomic_write(path.with_suffix(".json"), (json.dumps(man, indent=1) + "\n").encode())
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return man


def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).argmax(1).numpy()


def float_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict(model, x) == y))
