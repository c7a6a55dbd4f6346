"""Real-looking inputs for the trained MLPerf Tiny models in ``../shared/mlperf_tiny/``, made
here, with nothing downloaded:

- VWW (MobileNetV1-0.25, 1x3x96x96 RGB in [0, 1]): crops of the photos scikit-image ships
  (``skimage.data``), at random positions and scales, some mirrored, resized to 96x96.
- AD (the FC autoencoder, 640 = 5 frames x 128 log-mel bands): ten-second clips of a
  synthetic machine (``machine``), some with a fault, featurized as the MLPerf Tiny AD
  reference does (``logmel_frames``).
- KWS (DS-CNN, 1x1x49x10 MFCC): the ten keywords and other words spoken by Debian's
  ``espeak-ng`` in several voices, speeds and pitches, placed at a random offset in one
  second of 16 kHz audio with a little noise, plus silence and noise alone; featurized as the
  MLPerf Tiny KWS reference does (30 ms Hann frames every 20 ms, |FFT 512|, 40 HTK mel bands
  from 20 to 4000 Hz, log(x + 1e-6), DCT-II scaled as TensorFlow's ``mfccs_from_log_mel_
  spectrograms``, the first 10 coefficients, 49 frames).

    python bench/realdata.py      # writes bench/.data/{vww,kws}.npz, prints what they hold

The arrays are cached in ``bench/.data/`` (not committed) keyed by their recipe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "mlperf_tiny"
CACHE = Path(__file__).resolve().parent / ".data"

VWW_PHOTOS = (
    "astronaut", "camera", "cat", "coffee", "coins", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "rocket", "retina", "clock", "brick", "grass",
    "gravel", "colorwheel", "text", "cell",
)  # fmt: skip
KWS_CLASSES = (
    "down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes", "_silence_",
    "_unknown_",
)  # fmt: skip
KWS_UNKNOWN = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine",
    "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero",
)  # fmt: skip
KWS_VOICES = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd",
)  # fmt: skip
KWS_VARIANTS = ("", "+f1", "+f2", "+f3", "+f4", "+m1", "+m3", "+m5", "+m7")
RATE = 16000


def _cached(name: str, recipe: dict, make) -> dict[str, np.ndarray]:
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = CACHE / f"{name}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    arrays = make()
    CACHE.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=CACHE, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
    return arrays


def vww(n: int, seed: int) -> np.ndarray:
    """``n`` crops, (n, 3, 96, 96) float32 in [0, 1]."""
    recipe = {"what": "vww-crops-v1", "n": n, "seed": seed, "photos": VWW_PHOTOS}
    return _cached("vww", recipe, lambda: {"x": _vww(n, seed)})["x"]


def _vww(n: int, seed: int) -> np.ndarray:
    import skimage.data
    from skimage.transform import resize

    photos = []
    for name in VWW_PHOTOS:
        im = np.asarray(getattr(skimage.data, name)(), dtype=np.float64) / 255.0
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        photos.append(im[:, :, :3])
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, 96, 96), np.float32)
    for i in range(n):
        im = photos[rng.integers(len(photos))]
        h, w = im.shape[:2]
        side = int(rng.uniform(0.2, 1.0) * min(h, w))
        aspect = rng.uniform(0.8, 1.25)
        ch, cw = min(h, int(side * aspect)), min(w, int(side / aspect))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = im[top : top + ch, left : left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = resize(crop, (96, 96), anti_aliasing=True).transpose(2, 0, 1)
    return np.clip(out, 0.0, 1.0)


def kws(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` utterances: MFCCs (n, 1, 49, 10) float32 and the intended class (index into
    ``KWS_CLASSES``)."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("bench/realdata.py: needs espeak-ng (apt-get install espeak-ng)")
    recipe = {"what": "kws-espeak-v1", "n": n, "seed": seed, "voices": KWS_VOICES}
    z = _cached("kws", recipe, lambda: _kws(n, seed))
    return z["x"], z["y"]


def _speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
        check=True,
        capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate, a = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
    from scipy.signal import resample_poly

    g = np.gcd(RATE, rate)
    return resample_poly(a.astype(np.float64) / 32768.0, RATE // g, rate // g)


def _kws(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n):
        u = rng.random()
        label = 10 if u < 0.08 else 11 if u < 0.2 else int(rng.integers(10))
        audio = np.zeros(RATE)
        if label != 10:
            word = KWS_CLASSES[label] if label < 10 else KWS_UNKNOWN[rng.integers(len(KWS_UNKNOWN))]
            voice = KWS_VOICES[rng.integers(len(KWS_VOICES))]
            voice += KWS_VARIANTS[rng.integers(len(KWS_VARIANTS))]
            s = _speak(word, voice, int(rng.integers(120, 200)), int(rng.integers(25, 75)))
            nz = np.flatnonzero(np.abs(s) > 1e-3)
            s = s[nz[0] : nz[-1] + 1][:RATE] if nz.size else s[:RATE]
            at = int(rng.integers(0, RATE - len(s) + 1))
            audio[at : at + len(s)] = s * rng.uniform(0.3, 1.0) / max(np.abs(s).max(), 1e-9)
        audio += rng.normal(0.0, 10 ** rng.uniform(-4, -2), RATE)  # room noise, 40-80 dB down
        xs.append(mfcc(audio))
        ys.append(label)
    return {"x": np.stack(xs)[:, None].astype(np.float32), "y": np.array(ys, np.int64)}


def _mel_matrix(bins=40, fft=512, lo=20.0, hi=4000.0) -> np.ndarray:
    """TensorFlow's ``linear_to_mel_weight_matrix``: HTK mel, triangles, the DC bin unused."""

    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f) / 700.0)

    freqs = np.linspace(0.0, RATE / 2, fft // 2 + 1)[1:]
    edges = np.linspace(mel(lo), mel(hi), bins + 2)
    m = mel(freqs)[:, None]
    lower = (m - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    upper = (edges[None, 2:] - m) / (edges[2:] - edges[1:-1])
    w = np.maximum(0.0, np.minimum(lower, upper))
    return np.vstack([np.zeros((1, bins)), w])


def mfcc(audio: np.ndarray) -> np.ndarray:
    """(49, 10) MFCCs of one second of 16 kHz audio."""
    frame, step, fft = 480, 320, 512
    count = 1 + (len(audio) - frame) // step
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame) / frame)  # periodic Hann
    frames = np.stack([audio[i * step : i * step + frame] for i in range(count)]) * window
    spec = np.abs(np.fft.rfft(frames, fft))
    logmel = np.log(spec @ _mel_matrix(fft=fft) + 1e-6)
    k = np.arange(logmel.shape[1])
    dct = 2.0 * np.cos(np.pi * np.outer(k + 0.5, k) / len(k))  # unnormalised DCT-II
    return (logmel @ dct / np.sqrt(2.0 * len(k)))[:, :10]


def ad(clips: int, seed: int, anomalous: float = 0.0) -> np.ndarray:
    """Frames for the MLPerf Tiny anomaly-detection autoencoder, (n, 640) float32: ``clips``
    ten-second clips of synthetic machine sound, the first ``round(clips · anomalous)`` of
    them with a fault,
    each featurized as the reference does (``logmel_frames``)."""
    recipe = {"what": "ad-machine-v2", "clips": clips, "seed": seed, "anomalous": anomalous}
    return _cached("ad", recipe, lambda: {"x": _ad(clips, seed, anomalous)})["x"]


def machine(rng: np.random.Generator, fault: bool, seconds: float = 10.0) -> np.ndarray:
    """A toy machine: a motor's hum (a drifting fundamental of 40-250 Hz and its harmonics,
    amplitude modulated), gear ticks and broadband noise; a fault adds a rattle (bursts of
    noise at an off-harmonic resonance) or a whine (a high partial)."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = rng.uniform(40, 250) * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    audio = np.zeros(n)
    for h in range(1, int(rng.integers(4, 16))):
        audio += rng.uniform(0.2, 1.0) / h * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    audio *= 1 + rng.uniform(0.05, 0.4) * np.sin(2 * np.pi * rng.uniform(1, 20) * t)
    tick = np.zeros(n)
    period = int(RATE / rng.uniform(5, 40))
    tick[rng.integers(period) :: period] = rng.uniform(0.5, 2.0)
    audio += np.convolve(tick, np.exp(-np.arange(80) / 8.0) * rng.normal(size=80), "same")
    audio += rng.normal(0, 10 ** rng.uniform(-2.5, -0.8), n)
    if fault:
        if rng.random() < 0.5:  # rattle
            f = rng.uniform(1500, 6000)
            burst = (rng.random(n // 400 + 1) < 0.3).repeat(400)[:n]
            audio += 0.5 * burst * np.sin(2 * np.pi * f * t) * rng.normal(1, 0.3, n)
        else:  # whine
            audio += rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * rng.uniform(2000, 7000) * t)
    return audio / np.max(np.abs(audio)) * rng.uniform(0.1, 0.9)


def _ad(clips: int, seed: int, anomalous: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    faulty = round(clips * anomalous)
    frames = [logmel_frames(machine(rng, i < faulty)) for i in range(clips)]
    return np.concatenate(frames).astype(np.float32)


def logmel_frames(audio: np.ndarray, frames: int = 5) -> np.ndarray:
    """The anomaly-detection reference's features: 64 ms Hann frames every 32 ms (FFT 1024,
    hop 512), the power spectrum, 128 mel bands (Slaney, 0-8000 Hz), ``10 log10(x + ε)``,
    then every run of ``frames`` consecutive frames flattened: (runs, 128 · frames)."""
    fft, hop, bands = 1024, 512, 128
    pad = np.pad(audio, fft // 2, mode="reflect")  # centred frames
    count = 1 + (len(pad) - fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(fft) / fft)
    spec = np.abs(np.fft.rfft(np.stack([pad[i * hop : i * hop + fft] for i in range(count)])
                              * window)) ** 2  # fmt: skip
    db = 10.0 * np.log10(spec @ _slaney_mel(bands, fft) + np.finfo(np.float32).eps)
    runs = count - frames + 1
    return np.stack([db[i : i + frames].reshape(-1) for i in range(runs)])


def _slaney_mel(bands: int, fft: int) -> np.ndarray:
    """librosa's default mel filter bank (Slaney's mel scale and area normalisation)."""

    def mel(f):
        f = np.asarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        return np.where(f < 1000, lin, 15 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27))

    def hz(m):
        return np.where(m < 15, m * 200.0 / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    freqs = np.linspace(0, RATE / 2, fft // 2 + 1)
    edges = hz(np.linspace(mel(0.0), mel(RATE / 2), bands + 2))
    lower = (freqs[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    upper = (edges[None, 2:] - freqs[:, None]) / (edges[2:] - edges[1:-1])
    w = np.maximum(0.0, np.minimum(lower, upper))
    return w * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def main() -> int:
    x = vww(16, 0)
    print(f"vww: {x.shape}, mean {x.mean():.3f}, range [{x.min():.3f}, {x.max():.3f}]")
    x, y = kws(24, 0)
    print(f"kws: {x.shape}, mean {x.mean():.2f}, std {x.std():.2f}; classes {np.bincount(y)}")
    x = ad(2, 0, 0.5)
    print(f"ad: {x.shape}, mean {x.mean():.1f} dB, range [{x.min():.1f}, {x.max():.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
