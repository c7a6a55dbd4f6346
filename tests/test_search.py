"""The output objective (each activation's fl scored at the network's output) and GPTQ weight
rounding (the same formats, integers chosen against the layer's output error)."""

import numpy as np
import pytest
import torch

from fxpga.cli import main
from fxpga.errors import FxpgaError
from fxpga.hw import compiler
from fxpga.quant import artifact, data, frontend, golden, ir, quantizer, rounding, zoo
from fxpga.quant.qformat import QFormat, dequantize, quantize, requantize


def mlp(rng, loud=40.0):
    """linear(2→2)-ReLU-linear(2→1): hidden channel 0 reaches ``loud`` and the output ignores
    it; channel 1 stays below 1 and is all the output reads."""
    w1 = np.array([[loud, 0.0], [0.0, 0.9]])
    l1 = ir.Linear("l1", weight=w1, bias=np.zeros(2))
    l2 = ir.Linear("l2", weight=np.array([[0.0, 1.0]]), bias=np.zeros(1))
    g = ir.Graph((2,), [l1, ir.ReLU("r1"), l2])
    return g, rng.uniform(0.0, 1.0, size=(256, 2))


def test_the_output_objective_weighs_an_error_by_what_it_does_downstream(rng, monkeypatch):
    g, x = mlp(rng)
    l2 = quantizer.quantize_model(g, x, scheme="qiu", objective="l2")
    out = quantizer.quantize_model(g, x, scheme="qiu", objective="output")
    # l2 keeps the ignored channel's range; the output objective saturates it for the other,
    # as far as the walk's bound lets it
    fl = l2.layers[0].out_fmt.fl
    assert out.layers[0].out_fmt.fl == fl + quantizer.MAX_WALK
    assert quantizer.output_quality(out, x)[0] > quantizer.output_quality(l2, x)[0] + 3
    monkeypatch.setattr(quantizer, "MAX_WALK", 8)
    far = quantizer.quantize_model(g, x, scheme="qiu", objective="output")
    assert far.layers[0].out_fmt.fl >= fl + 3


def test_the_output_objective_picks_the_least_output_error_of_its_shortlist(rng):
    g, x = mlp(rng, loud=3.0)
    qm = quantizer.quantize_model(g, x, scheme="qiu", objective="output")
    la = qm.layers[0]
    idx = np.unique(np.linspace(0, len(x) - 1, quantizer.OUTPUT_SAMPLES).astype(int))
    acc = golden.accumulate(la, quantize(x, qm.input_fmt))
    acc_fl = qm.input_fmt.fl + la.w_fmt.fl
    want = np.maximum(x @ g.nodes[0].weight.T, 0)
    errs = {}
    for fl in quantizer.candidates(want, 8):
        h = np.maximum(dequantize(requantize(acc, acc_fl - fl, 8), fl), 0)
        d = want - h
        downstream = h[idx] @ g.nodes[2].weight.T - want[idx] @ g.nodes[2].weight.T
        errs[fl] = ((d * d).sum(), (downstream**2).sum())
    start = min(errs, key=lambda f: (errs[f][0], f))
    # the walk from the l2 choice: at most MAX_WALK steps, each lowering the output error,
    # and it stops where the next would not
    fl = la.out_fmt.fl
    assert abs(fl - start) <= quantizer.MAX_WALK
    near = [f for f in errs if abs(f - start) <= quantizer.MAX_WALK]
    assert errs[fl][1] == min(errs[f][1] for f in near) or errs[fl][1] < errs[start][1]
    step = 1 if fl >= start else -1
    path = list(range(start, fl + step, step))
    assert all(errs[b][1] < errs[a][1] for a, b in zip(path, path[1:], strict=False))


def test_forward_from_runs_the_later_layers_alone(rng):
    model, ds_name = zoo.builtin("digits-resnet")
    ds = data.load(ds_name)
    g = frontend.from_module(model, ds.sample_shape)
    x = ds.calib(4)
    ref = g.float_forward(x, keep=True)
    adds = [k for k, n in enumerate(g.nodes) if isinstance(n, ir.Add)]
    k = adds[1] - 1  # in a residual block: the skip is live across it
    made = {n.name: i for i, n in enumerate(g.nodes)}
    live = {i for n in g.nodes[k + 1 :] for i in n.inputs if made.get(i, -1) <= k}
    assert len(live) == 2
    env = {j: torch.from_numpy(ref[j]) for j in live}
    np.testing.assert_allclose(g.forward_from(k + 1, env), ref[g.nodes[-1].name], rtol=1e-12)


@pytest.mark.parametrize(
    "node",
    [
        ir.Conv("c", weight=np.zeros((6, 2, 3, 2)), bias=np.zeros(6), stride=(2, 1),
                padding=(1, 1), groups=2),
        ir.Conv("dw", weight=np.zeros((4, 1, 3, 3)), bias=np.zeros(4), padding=(1, 1),
                groups=4),
        ir.Linear("fc", weight=np.zeros((3, 5)), bias=np.zeros(3)),
    ],
)  # fmt: skip
def test_hessians_sum_each_groups_receptive_fields(node, rng):
    shape = (5,) if isinstance(node, ir.Linear) else (4, 5, 6)
    ir.Graph(shape, [node])
    x = rng.integers(-8, 8, size=(3, *shape))
    h = rounding.hessians(node, x)
    if isinstance(node, ir.Linear):
        assert np.array_equal(h[0], x.T @ x)
        return
    # brute force: each output position's window, in the weights' (c, kh, kw) order
    kh, kw = node.kernel
    ci = node.weight.shape[1]
    xp = np.pad(x, ((0, 0), (0, 0), (node.padding[0],) * 2, (node.padding[1],) * 2))
    _, oh, ow = node.out_shape
    want = np.zeros_like(h)
    for g in range(node.groups):
        for n in range(len(x)):
            for i in range(oh):
                for j in range(ow):
                    y, z = i * node.stride[0], j * node.stride[1]
                    v = xp[n, g * ci : (g + 1) * ci, y : y + kh, z : z + kw].reshape(-1)
                    want[g] += np.outer(v, v)
    assert np.array_equal(h, want)


def test_gptq_lowers_the_output_error_on_the_formats_grid(rng):
    # correlated inputs, as a layer's are: where rounding to nearest is furthest from best
    x = rng.normal(size=(512, 3)) @ rng.normal(size=(3, 24)) + 0.1 * rng.normal(size=(512, 24))
    w = rng.normal(size=(16, 24))
    fls = rng.integers(3, 6, size=16)
    q = rounding.gptq(w, x.T @ x, fls, 6)
    near = np.stack([quantize(r, QFormat(6, int(f))) for r, f in zip(w, fls, strict=True)])
    assert q.min() >= -32 and q.max() <= 31
    scale = np.ldexp(1.0, -fls)[:, None]

    def err(qi):
        return float(np.sum(((w - qi * scale) @ x.T) ** 2))

    assert err(q) < 0.7 * err(near)
    # uncorrelated inputs leave nothing to compensate: rounding to nearest
    assert np.array_equal(rounding.gptq(w, np.diag(rng.uniform(1, 2, 24)), fls, 6), near)


def test_round_weights_rounds_each_group_on_its_channels_grids(rng):
    node = ir.Conv("c", weight=rng.normal(size=(4, 3, 3, 3)), bias=np.zeros(4), padding=(1, 1),
                   groups=2)  # fmt: skip
    ir.Graph((6, 5, 5), [node])
    x = rng.integers(0, 16, size=(8, 6, 5, 5))
    fls = np.array([3, 5, 4, 2])
    got = rounding.round_weights(node, x, fls, 6)
    h = rounding.hessians(node, x)
    w = node.weight.reshape(4, -1)
    for g in range(2):
        want = rounding.gptq(w[2 * g : 2 * g + 2], h[g], fls[2 * g : 2 * g + 2], 6)
        assert np.array_equal(got[2 * g : 2 * g + 2].reshape(2, -1), want)


def test_gptq_refuses_a_layer_too_wide_before_it_allocates():
    node = ir.Linear("wide", weight=np.zeros((1, rounding.MAX_K + 1)), bias=np.zeros(1))
    ir.Graph((rounding.MAX_K + 1,), [node])
    with pytest.raises(FxpgaError, match="layer 'wide': GPTQ rounding takes layers of at most"):
        rounding.hessians(node, np.zeros((1, rounding.MAX_K + 1)))


def test_given_and_static_formats_are_not_scored(rng, monkeypatch):
    g, x = mlp(rng)
    calls = []
    real = quantizer.Search.at_output
    monkeypatch.setattr(
        quantizer.Search, "at_output", lambda self, k, *a: calls.append(k) or real(self, k, *a)
    )
    quantizer.quantize_model(g, x, scheme="static", objective="output")
    assert calls == []
    cfg = quantizer.Config(input=quantizer.Override(8, 6))
    quantizer.quantize_model(g, x, scheme="qiu", objective="output", config=cfg)
    assert calls and -1 not in calls  # the layers are scored, the given input is not


def test_gptq_rounded_models_run_bit_exact_in_the_compiler():
    model, ds_name = zoo.builtin("digits-dsnet")
    ds = data.load(ds_name)
    g = frontend.from_module(model, ds.sample_shape)
    near = quantizer.quantize_model(g, ds.calib(64), objective="l2")
    qm = quantizer.quantize_model(g, ds.calib(64), objective="l2", rounding="gptq")
    assert [la.w_fls for la in qm.layers] == [la.w_fls for la in near.layers]  # same grid
    changed = [la.name for la, n in zip(qm.layers, near.layers, strict=True)
               if la.w is not None and not np.array_equal(la.w, n.w)]  # fmt: skip
    assert len(changed) > len(g.weighted()) // 2
    prog = compiler.compile_model(qm, compiler.EngineConfig.for_model(qm, lanes=4))
    xi = golden.quantize_input(qm, ds.x_test[:3])
    want = golden.run_int(qm, xi).reshape(len(xi), -1)
    for i in range(len(xi)):
        np.testing.assert_array_equal(compiler.run_program(prog, xi[i]), want[i])


def test_rounding_and_objective_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "g.fxq"
    argv = ["quantize", "digits-cnn", "--rounding", "gptq", "--calib", "64", "-o", str(out)]
    assert main(argv) == 0
    near = tmp_path / "n.fxq"
    assert main([*argv[:2], "--calib", "64", "-o", str(near)]) == 0
    qm, qn = artifact.load(out), artifact.load(near)
    assert any(not np.array_equal(a.w, b.w) for a, b in zip(qm.layers, qn.layers, strict=True)
               if a.w is not None)  # fmt: skip
    with pytest.raises(FxpgaError, match="unknown rounding 'up'"):
        quantizer.quantize_model(qm.graph, np.zeros((1, *qm.graph.input_shape)), rounding="up")
    with pytest.raises(SystemExit):
        main(["quantize", "digits-cnn", "--objective", "l3", "-o", str(out)])
