"""Built-in models, trained by fxpga from bundled data and cached.

``digits-cnn``: conv-bn-relu-pool ×2, fc-relu, fc on scikit-learn's 8×8 digits (92k MACs).
``digits-vgg``: a VGG-style net (3×3 convs in pairs, 16-16 / 32-32 / 64 channels, each stage
ending in a 2×2 max pool, then fc-relu, fc) on the same digits upscaled to 16×16 (1.8M MACs).

Each is trained with a fixed seed on the fixed training split; the state_dict is cached under a
key that hashes this file's source, the model name, the seed and the torch version, so the
second run loads it instantly.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import FxpgaError
from ..progress import bar as progress_bar
from . import data

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


# name: (class, dataset, training epochs)
BUILTIN = {"digits-cnn": (DigitsCNN, "digits", 60), "digits-vgg": (DigitsVGG, "digits16", 40)}


def cache_dir() -> Path:
    d = os.environ.get("FXPGA_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "fxpga"


def cache_key(name: str) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(f"{name}:{SEED}:{torch.__version__}".encode())
    return h.hexdigest()[:16]


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


def train(name: str, epochs: int | None = None, progress: bool = True) -> nn.Module:
    """Train built-in model ``name`` from scratch (AdamW, one-cycle schedule, shift
    augmentation of one input pixel per 8 pixels of width), deterministically."""
    cls, ds_name, default_epochs = BUILTIN[name]
    epochs = epochs or default_epochs
    ds = data.load(ds_name)
    shift = max(1, ds.sample_shape[-1] // 8)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = cls()
    x = torch.from_numpy(ds.x_train)
    y = torch.from_numpy(ds.y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = -(-len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * steps)
    loss_fn = nn.CrossEntropyLoss()
    bar = progress_bar(range(epochs), desc=f"training {name} (once, then cached)", enabled=progress)
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


def builtin(name: str, progress: bool = True) -> tuple[nn.Module, str]:
    """The built-in model ``name`` (trained or from cache) and its dataset name."""
    if name not in BUILTIN:
        raise FxpgaError(f"unknown built-in model '{name}' (have: {', '.join(BUILTIN)})")
    cls, ds_name, _ = BUILTIN[name]
    path = cache_dir() / f"{name}-{cache_key(name)}.pt"
    model = cls()
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), ds_name
    with torch.random.fork_rng():
        torch.set_num_threads(max(1, torch.get_num_threads()))
        model = train(name, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model.eval(), ds_name


def float_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(x)).argmax(1).numpy()
    return float(np.mean(pred == y))
