"""Golden model: exact against an independent float64 fake-quant path and a naive loop."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxpga.quant import fakequant, frontend, golden, quantizer

ACTIVATIONS = [
    nn.ReLU,
    nn.ReLU6,
    lambda: nn.Hardtanh(-0.5, 1.25),
    lambda: nn.Hardtanh(0.0, 0.3),
    lambda: nn.Hardtanh(-3.0, 0.0),
]


@st.composite
def networks(draw):
    """A random supported chain with its input shape, widths and a seed for its weights."""
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(3, 9)), draw(st.integers(3, 9))
    in_shape = (c, h, w)
    mods = []
    for _ in range(draw(st.integers(0, 3))):
        co = draw(st.integers(1, 5)) * draw(st.sampled_from([1, c]))  # c·k: depthwise
        kh, kw = draw(st.integers(1, min(3, h + 2))), draw(st.integers(1, min(3, w + 2)))
        ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
        sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        if h + 2 * ph < kh or w + 2 * pw < kw:
            continue
        # grouped and depthwise too: groups divides both channel counts
        g = draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0 and co % d == 0]))
        mods.append(
            nn.Conv2d(c, co, (kh, kw), (sh, sw), (ph, pw), groups=g, bias=draw(st.booleans()))
        )
        c, h, w = co, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if draw(st.booleans()):
            mods.append(nn.BatchNorm2d(c))
        if draw(st.booleans()):  # ReLU, or an exact clamp (ReLU6, Hardtanh: 0 inside)
            mods.append(draw(st.sampled_from(ACTIVATIONS))())
        if h >= 2 and w >= 2 and draw(st.booleans()):
            k, s = 2, draw(st.integers(1, 2))
            p = draw(st.integers(0, 1))
            mods.append((nn.MaxPool2d if draw(st.booleans()) else nn.AvgPool2d)(k, s, p))
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    mods.append(nn.Flatten())
    f = c * h * w
    for i in range(draw(st.integers(1, 2))):
        o = draw(st.integers(1, 6))
        mods.append(nn.Linear(f, o))
        f = o
        if i == 0 and draw(st.booleans()):
            mods.append(nn.ReLU())
    widths = quantizer.Widths(
        draw(st.integers(2, 12)), draw(st.integers(2, 12)), draw(st.integers(2, 12))
    )
    return mods, in_shape, draw(st.integers(0, 2**31 - 1)), widths


def build(mods, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(*mods)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.3, 2.0)
            m.weight.data.normal_()
    return model.eval()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks(), st.sampled_from(["dynamic", "static"]))
def test_golden_equals_fake_quant_on_random_networks(net, scheme):
    mods, in_shape, seed, widths = net
    model = build(mods, seed)
    g = frontend.from_module(model, in_shape)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((12, *in_shape)) * rng.uniform(0.1, 4)
    qm = quantizer.quantize_model(g, x[:8], widths, scheme=scheme)
    assert qm.max_acc_bits <= 52  # float64 fake quant is exact below 2^53
    gi = golden.run(qm, x, keep=True)
    fk = fakequant.fake_run(qm, x, keep=True)
    np.testing.assert_array_equal(fk["input"], np.ldexp(gi["input"], -qm.input_fmt.fl))
    for la in qm.layers:
        got = np.ldexp(gi[la.name].astype(np.float64), -la.out_fmt.fl)
        np.testing.assert_array_equal(fk[la.name], got, err_msg=la.name)
        lo, hi = la.out_range
        assert gi[la.name].min() >= lo and gi[la.name].max() <= hi, la.name
        if la.acc_range is not None:
            acc = golden.accumulate(la, gi[_prev(qm, la)])
            assert acc.min() >= la.acc_range[0] and acc.max() <= la.acc_range[1]


def _prev(qm, la):
    i = qm.layers.index(la)
    return "input" if i == 0 else qm.layers[i - 1].name


def test_conv_acc_matches_naive_loop(rng):
    """Plain, grouped and depthwise (groups = channels, one or two outputs each)."""
    for k in range(30):
        groups = [1, 2, 3][k % 3]
        n, c, h, w = 2, groups * rng.integers(1, 3), rng.integers(3, 7), rng.integers(3, 7)
        o, kh, kw = groups * rng.integers(1, 3), rng.integers(1, 4), rng.integers(1, 4)
        sh, sw, ph, pw = rng.integers(1, 3), rng.integers(1, 3), kh // 2, kw // 2
        x = rng.integers(-128, 128, (n, c, h, w))
        wt = rng.integers(-128, 128, (o, c // groups, kh, kw))
        b = rng.integers(-1000, 1000, o)
        got = golden.conv_acc(x, wt, b, (sh, sw), (ph, pw), groups)
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        want = np.zeros((n, o, oh, ow), dtype=np.int64)
        for i in range(n):
            for oc in range(o):
                for y in range(oh):
                    for xx in range(ow):
                        g, ci = oc // (o // groups), c // groups
                        win = xp[i, g * ci : (g + 1) * ci, y * sh : y * sh + kh]
                        win = win[:, :, xx * sw : xx * sw + kw]
                        want[i, oc, y, xx] = int((win * wt[oc]).sum()) + b[oc]
        np.testing.assert_array_equal(got, want)


def test_accumulator_bound_is_tight():
    """An input at the range's corners (by weight sign) reaches the recorded bound exactly."""
    torch.manual_seed(3)
    g = frontend.from_module(nn.Sequential(nn.Flatten(), nn.Linear(20, 3)), (20,))
    x = np.random.default_rng(0).standard_normal((16, 20))
    qm = quantizer.quantize_model(g, x, quantizer.Widths(8))
    la = qm["1"]
    lo, hi = la.in_range
    best = np.where(la.w > 0, hi, lo)  # maximises each output's Σ x·w
    acc = golden.accumulate(la, best)
    assert acc.max() == la.acc_range[1]
    worst = np.where(la.w > 0, lo, hi)
    assert golden.accumulate(la, worst).min() == la.acc_range[0]


def test_wide_accumulators_use_exact_python_ints():
    torch.manual_seed(5)
    g = frontend.from_module(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), (64,))
    x = np.random.default_rng(1).standard_normal((8, 64))
    qm = quantizer.quantize_model(g, x, quantizer.Widths(32))
    la = qm["1"]
    assert la.acc_bits > golden.INT64_SAFE_BITS
    xi = golden.quantize_input(qm, x)
    got = golden.run_int(qm, xi)
    for i in range(len(x)):
        for o in range(4):
            acc = sum(int(a) * int(b) for a, b in zip(xi[i], la.w[o], strict=True)) + int(la.b[o])
            s = la.shift
            v = (acc + (1 << (s - 1))) >> s if s > 0 else acc << -s
            v = max(-(2**31), min(2**31 - 1, v))
            assert got[i, o] == v


def test_digits_golden_equals_fake_quant(digits_q8, digits):
    gi = golden.run(digits_q8, digits.x_test, keep=True)
    fk = fakequant.fake_run(digits_q8, digits.x_test, keep=True)
    for la in digits_q8.layers:
        np.testing.assert_array_equal(
            fk[la.name], np.ldexp(gi[la.name].astype(np.float64), -la.out_fmt.fl)
        )


@pytest.mark.parametrize("batch", [1, 7, 500])
def test_batching_does_not_change_results(digits_q8, digits, batch):
    xi = golden.quantize_input(digits_q8, digits.x_test)
    np.testing.assert_array_equal(
        golden.run_int(digits_q8, xi, batch=batch), golden.run_int(digits_q8, xi)
    )


def test_clip_bounds_are_the_representable_values_inside():
    from fxpga.quant.qformat import QFormat, clip_bounds

    for bits in range(2, 7):
        for fl in range(-3, 9):
            fmt = QFormat(bits, fl)
            grid = np.arange(fmt.qmin, fmt.qmax + 1)
            for lo, hi in [
                (0.0, 6.0),
                (-0.5, 1.25),
                (0.0, 0.3),
                (-3.0, 0.0),
                (None, 0.7),
                (0.25, None),
                (-100.0, 100.0),
            ]:
                v = np.ldexp(grid.astype(np.float64), -fl)
                inside = grid[((lo is None) | (v >= (lo or 0))) & ((hi is None) | (v <= (hi or 0)))]
                qlo, qhi = clip_bounds(fmt, lo, hi)
                if len(inside):
                    assert (qlo, qhi) == (inside.min(), inside.max()), (fmt, lo, hi)
                else:
                    assert qlo > qhi, (fmt, lo, hi)


def test_relu6_clamps_exactly(tmp_path):
    """ReLU6 after a conv whose outputs reach past 6: the golden output is clamped at the
    grid value 6 (or the largest below it), fake quant agrees, and it survives the .fxq."""
    from fxpga.quant import artifact

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU6(), nn.Flatten(), nn.Linear(12, 2)).eval()
    g = frontend.from_module(model, (1, 4, 4))
    assert [n.op for n in g.nodes] == ["conv", "clip", "flatten", "linear"]
    x = np.random.default_rng(0).standard_normal((32, 1, 4, 4)) * 20
    qm = quantizer.quantize_model(g, x, quantizer.Widths(8))
    gi = golden.run(qm, x, keep=True)
    clip = qm.layers[1]
    top = int(np.floor(np.ldexp(6.0, clip.in_fmt.fl)))
    assert gi[clip.name].max() == min(top, clip.in_fmt.qmax) and gi[clip.name].min() == 0
    assert (gi["0"] > top).any()  # the conv really went past 6
    fk = fakequant.fake_run(qm, x, keep=True)
    np.testing.assert_array_equal(
        fk[clip.name], np.ldexp(gi[clip.name].astype(float), -clip.out_fmt.fl)
    )
    artifact.save(qm, tmp_path / "c.fxq")
    back = artifact.load(tmp_path / "c.fxq")
    assert (back.layers[1].node.lo, back.layers[1].node.hi) == (0.0, 6.0)
    np.testing.assert_array_equal(golden.run(back, x), golden.run(qm, x))
