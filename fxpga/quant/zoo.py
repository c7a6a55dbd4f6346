"""Built-in models, trained by fxpga from bundled data and cached.

``digits-cnn``: conv-bn-relu-pool ×2, fc-relu, fc on scikit-learn's 8×8 digits. Trained with
a fixed seed on the fixed training split; the state_dict is cached under a key that hashes
this file's source, the seed and the torch version, so the second run loads it instantly.
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


BUILTIN = {"digits-cnn": (DigitsCNN, "digits")}


def cache_dir() -> Path:
    d = os.environ.get("FXPGA_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "fxpga"


def cache_key(name: str) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(f"{name}:{SEED}:{torch.__version__}".encode())
    return h.hexdigest()[:16]


def _shift_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel (zero fill): cheap, label-preserving."""
    n = x.shape[0]
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    h, w = x.shape[2:]
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    idx_n = torch.arange(n)[:, None, None, None]
    return pad[idx_n, torch.zeros_like(idx_n), rows, cols]


def train_digits_cnn(epochs: int = 60, progress: bool = True) -> nn.Module:
    ds = data.digits()
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = DigitsCNN()
    x = torch.from_numpy(ds.x_train)
    y = torch.from_numpy(ds.y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * 17)
    loss_fn = nn.CrossEntropyLoss()
    bar = progress_bar(
        range(epochs), desc="training digits-cnn (once, then cached)", enabled=progress
    )
    for _ in bar:
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            xb = _shift_augment(x[idx], gen)
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
    cls, ds_name = BUILTIN[name]
    path = cache_dir() / f"{name}-{cache_key(name)}.pt"
    model = cls()
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), ds_name
    with torch.random.fork_rng():
        torch.set_num_threads(max(1, torch.get_num_threads()))
        model = train_digits_cnn(progress=progress)
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
