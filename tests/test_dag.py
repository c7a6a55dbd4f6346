"""Graphs that branch: residual add and channel concat through the frontend, the quantizer,
the golden model, fake quantization, the artifact and the report."""

import re

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fxpga.errors import FxpgaError
from fxpga.quant import artifact, fakequant, frontend, golden, ir, quantizer, report


class Residual(nn.Module):
    """conv-bn-relu, a residual block (two convs and an add), a two-branch concat, an FC."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.c4 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 3, padding=1, groups=4)
        self.fc = nn.Linear(12 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(x + self.b2(self.c2(x)))
        z = torch.cat([self.c3(x), self.c4(x)], dim=1)
        return self.fc(torch.flatten(z, 1))


def _seeded(model, seed=0):
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.reset_parameters()
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_residual_and_concat_import_as_a_dag():
    model = _seeded(Residual())
    g = frontend.from_module(model, (1, 8, 8))
    assert [(n.op, n.inputs) for n in g.nodes] == [
        ("conv", ("input",)),
        ("relu", ("c1",)),
        ("conv", ("relu",)),
        ("add", ("relu", "c2")),  # the BatchNorm folded away, its readers read the conv
        ("relu", ("add",)),
        ("conv", ("relu_1",)),
        ("conv", ("relu_1",)),
        ("concat", ("c3", "c4")),
        ("flatten", ("cat",)),
        ("linear", ("flatten",)),
    ]
    assert not g.is_chain and g["cat"].out_shape == (12, 8, 8)
    x = np.random.default_rng(0).uniform(0, 1, (32, 1, 8, 8))
    want = model(torch.tensor(x, dtype=torch.float64).float()).detach().numpy()
    np.testing.assert_allclose(g.float_forward(x), want, atol=1e-5)


def test_dag_quantizes_bit_exact_and_round_trips(tmp_path):
    g = frontend.from_module(_seeded(Residual()), (1, 8, 8))
    x = np.random.default_rng(1).uniform(0, 1, (48, 1, 8, 8))
    qm = quantizer.quantize_model(g, x[:32])
    gi = golden.run(qm, x, keep=True)
    fk = fakequant.fake_run(qm, x, keep=True)
    for la in qm.layers:
        np.testing.assert_array_equal(fk[la.name], np.ldexp(gi[la.name], -la.out_fmt.fl))
    assert qm["add"].in_fmts == (qm["relu"].out_fmt, qm["c2"].out_fmt)
    assert qm["cat"].in_fmts == (qm["c3"].out_fmt, qm["c4"].out_fmt)
    artifact.save(qm, tmp_path / "r.fxq")
    back = artifact.load(tmp_path / "r.fxq")
    assert [n.inputs for n in back.graph.nodes] == [n.inputs for n in g.nodes]
    assert [la.in_fmts for la in back.layers] == [la.in_fmts for la in qm.layers]
    np.testing.assert_array_equal(golden.run(back, x), gi["fc"])
    table = report.layer_table(qm)
    assert re.search(r"^add +add +relu,c2 +8x8x8 .* 25|^add +add +relu,c2", table, re.M), table
    assert re.search(r"^cat +concat +c3,c4 +12x8x8", table, re.M), table


def _add_model(fl_out: int):
    """input (Q8.4) + relu(input), the add's output format forced to fl_out."""
    g = ir.Graph((3,), [ir.ReLU("r"), ir.Add("a", inputs=("input", "r"))])
    cfg = quantizer.Config.from_json(
        {
            "input": {"bits": 8, "fl": 4},
            "layers": {"a": {"output": {"bits": 8, "fl": fl_out}}},
        },
        "cfg",
    )
    return quantizer.quantize_model(g, np.ones((1, 3)), config=cfg)


def test_add_aligns_each_input_rounding_then_saturates_the_sum():
    x = np.array([[7, -7, 127]])
    # fl 4 → 2: (x + 2) >> 2 for each input, then the sum: 7 → 2 + 2, -7 → -2 + 0, 127 → 32 + 32
    np.testing.assert_array_equal(golden.run_int(_add_model(2), x), [[4, -2, 64]])
    # fl 4 → 5: x << 1, each input saturated to 8 bits, the sum saturated again
    np.testing.assert_array_equal(golden.run_int(_add_model(5), x), [[28, -14, 127]])
    # an input alone out of range is saturated before the sum: 64·2 → 127, + (−2·2)
    np.testing.assert_array_equal(golden.run_int(_add_model(5), [[-64, 0, 0]]), [[-128, 0, 0]])


def test_concat_aligns_each_input():
    g = ir.Graph(
        (1, 2, 2),
        [ir.ReLU("r"), ir.Concat("c", inputs=("input", "r"))],
    )
    cfg = quantizer.Config.from_json(
        {"input": {"bits": 8, "fl": 3}, "layers": {"c": {"output": {"bits": 6, "fl": 1}}}}, "c"
    )
    qm = quantizer.quantize_model(g, np.ones((1, 1, 2, 2)), config=cfg)
    x = np.array([[[[5, -6], [127, -128]]]])
    # (x + 2) >> 2, saturated to 6 bits (-32..31)
    np.testing.assert_array_equal(
        golden.run_int(qm, x), [[[[1, -1], [31, -32]], [[1, 0], [31, 0]]]]
    )
    assert qm["c"].out_range == (-32, 31)


@pytest.mark.parametrize(
    ("forward", "why"),
    [
        (lambda m, x: torch.cat([m.c(x), x], dim=2), "concatenation along dim=2"),
        (lambda m, x: torch.cat([m.c(x), x], dim=-1), "concatenation along dim=-1"),
        (lambda m, x: m.c(x) + 1.0, "expects tensors computed from the input"),
        (lambda m, x: torch.add(m.c(x), x, alpha=2), "alpha=2"),
        (lambda m, x: (m.c(x), x), "must return one tensor"),
    ],
)
def test_bad_branches_are_one_line_errors(forward, why):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return forward(self, x)

    with pytest.raises(FxpgaError, match=re.escape(why)) as e:
        frontend.from_module(Net(), (1, 4, 4))
    assert "\n" not in str(e.value)


def test_batchnorm_after_a_conv_that_branches_is_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.bn = nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)

        def forward(self, x):
            y = self.c(x)
            return self.bn(y) + y

    with pytest.raises(FxpgaError, match=r"folded into 'c' if nothing else reads .* 2 layers"):
        frontend.from_module(Net().eval(), (1, 4, 4))


def test_graph_checks_its_edges():
    with pytest.raises(FxpgaError, match="its input 'nope' is not the graph input or an earlier"):
        ir.Graph((2,), [ir.ReLU("r", inputs=("nope",))])
    with pytest.raises(FxpgaError, match="layer 'r': its output is used by no later layer"):
        ir.Graph((2,), [ir.ReLU("r"), ir.ReLU("s", inputs=("input",))])
    with pytest.raises(FxpgaError, match="add takes two or more inputs"):
        ir.Graph((2,), [ir.Add("a", inputs=("input",))])
    with pytest.raises(FxpgaError, match=r"add needs inputs of one shape, got \(4,\), \(2,\)"):
        ir.Graph(
            (2,), [ir.Concat("c", inputs=("input", "input")), ir.Add("a", inputs=("c", "input"))]
        )
    with pytest.raises(FxpgaError, match="'input' is the graph input's name"):
        ir.Graph((2,), [ir.ReLU("input")])


def test_config_sets_add_formats_only_where_they_exist():
    g = ir.Graph((3,), [ir.ReLU("r"), ir.Add("a", inputs=("input", "r"))])
    with pytest.raises(FxpgaError, match="layer 'a' is a add, which has no weights"):
        quantizer.Config.from_json({"layers": {"a": {"weight": {"bits": 8}}}}, "c").check(g)
    with pytest.raises(FxpgaError, match="only conv/linear/add/concat formats can be set"):
        quantizer.Config.from_json({"layers": {"r": {"output": {"bits": 8}}}}, "c").check(g)


def test_the_compilers_layout_of_a_dag_matches_golden():
    """The residual add and the concat laid out for the engine (compiler.run_program, its
    functional model): equal to the golden model; refused in one line by an engine without
    branches."""
    from fxpga.hw import compiler
    from fxpga.hw.compiler import EngineConfig

    g = frontend.from_module(_seeded(Residual()), (1, 8, 8))
    x = np.random.default_rng(0).uniform(0, 1, (8, 1, 8, 8))
    qm = quantizer.quantize_model(g, x)
    with pytest.raises(FxpgaError, match="it needs an engine built with EngineConfig.branches"):
        compiler.compile_model(qm, EngineConfig(lanes=4))
    prog = compiler.compile_model(qm, EngineConfig.for_model(qm, 4))
    xi = golden.quantize_input(qm, x)
    want = golden.run_int(qm, xi).reshape(len(x), -1)
    for i in range(len(x)):
        np.testing.assert_array_equal(compiler.run_program(prog, xi[i]), want[i])


# ---- random DAGs: golden == fake quant ------------------------------------------------------


@st.composite
def dags(draw):
    """A random plan of convs, pools, activations, adds and concats over (C, H, W) tensors;
    every tensor no later op reads is flattened into the final concat and FC."""
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(3, 7)), draw(st.integers(3, 7))
    shapes = [(c, h, w)]
    plan = []
    for _ in range(draw(st.integers(1, 6))):
        src = draw(st.integers(0, len(shapes) - 1))
        c, h, w = shapes[src]
        kind = draw(st.sampled_from(["conv", "conv", "act", "pool", "add", "cat"]))
        if kind == "conv":
            co = draw(st.integers(1, 4)) * draw(st.sampled_from([1, c]))
            g = draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0 and co % d == 0]))
            k = draw(st.integers(1, min(3, h, w)))
            s = draw(st.integers(1, 2))
            p = draw(st.integers(0, k // 2))
            plan.append(("conv", src, co, k, s, p, g, draw(st.booleans())))
            shapes.append((co, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1))
        elif kind == "act":
            plan.append(("act", src, draw(st.integers(0, len(ACTS) - 1))))
            shapes.append((c, h, w))
        elif kind == "pool" and h >= 2 and w >= 2:
            plan.append(("pool", src, draw(st.booleans())))
            shapes.append((c, h // 2, w // 2))
        elif kind == "add":
            same = [i for i, s in enumerate(shapes) if s == (c, h, w)]
            plan.append(("add", src, draw(st.sampled_from(same))))
            shapes.append((c, h, w))
        elif kind == "cat":
            fits = [i for i, s in enumerate(shapes) if s[1:] == (h, w)]
            plan.append(("cat", src, draw(st.sampled_from(fits))))
            shapes.append((c + shapes[plan[-1][2]][0], h, w))
    widths = quantizer.Widths(draw(st.integers(3, 10)), draw(st.integers(3, 10)))
    return shapes[0], plan, draw(st.integers(0, 2**31 - 1)), widths


ACTS = [nn.ReLU, nn.ReLU6, lambda: nn.Hardtanh(-0.5, 1.0)]


class Plan(nn.Module):
    def __init__(self, in_shape, plan):
        super().__init__()
        self.plan = plan
        self.ops = nn.ModuleList()
        shapes, read = [in_shape], set()
        for step in plan:
            kind, src = step[0], step[1]
            read.add(src)
            c = shapes[src][0]
            if kind == "conv":
                _, _, co, k, s, p, g, bn = step
                m = nn.Sequential(nn.Conv2d(c, co, k, s, p, groups=g))
                if bn:
                    m.append(nn.BatchNorm2d(co))
                self.ops.append(m)
            elif kind == "act":
                self.ops.append(ACTS[step[2]]())
            elif kind == "pool":
                self.ops.append(nn.MaxPool2d(2) if step[2] else nn.AvgPool2d(2))
            else:
                read.add(step[2])
                self.ops.append(nn.Identity())
            shapes.append(_shape_after(shapes, step))
        self.unread = [i for i in range(len(shapes)) if i not in read or i == len(shapes) - 1]
        self.fc = nn.Linear(sum(int(np.prod(shapes[i])) for i in self.unread), 3)

    def forward(self, x):
        ts = [x]
        for step, op in zip(self.plan, self.ops, strict=True):
            a = ts[step[1]]
            if step[0] == "add":
                ts.append(a + ts[step[2]])
            elif step[0] == "cat":
                ts.append(torch.cat([a, ts[step[2]]], dim=1))
            else:
                ts.append(op(a))
        flat = [torch.flatten(ts[i], 1) for i in self.unread]
        return self.fc(flat[0] if len(flat) == 1 else torch.cat(flat, dim=1))


def _shape_after(shapes, step):
    c, h, w = shapes[step[1]]
    if step[0] == "conv":
        _, _, co, k, s, p, _, _ = step
        return (co, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
    if step[0] == "pool":
        return (c, h // 2, w // 2)
    if step[0] == "cat":
        return (c + shapes[step[2]][0], h, w)
    return (c, h, w)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.sampled_from(["dynamic", "static"]))
def test_golden_equals_fake_quant_on_random_dags(dag, scheme):
    in_shape, plan, seed, widths = dag
    model = _seeded(Plan(in_shape, plan), seed)
    g = frontend.from_module(model, in_shape)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((10, *in_shape)) * rng.uniform(0.2, 3)
    want = model(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(g.float_forward(x), want, rtol=1e-4, atol=1e-4)
    qm = quantizer.quantize_model(g, x[:6], widths, scheme=scheme)
    gi = golden.run(qm, x, keep=True)
    fk = fakequant.fake_run(qm, x, keep=True)
    for la in qm.layers:
        np.testing.assert_array_equal(
            fk[la.name], np.ldexp(gi[la.name].astype(np.float64), -la.out_fmt.fl), la.name
        )
        lo, hi = la.out_range
        assert gi[la.name].min() >= lo and gi[la.name].max() <= hi, la.name
        if la.acc_range is not None:
            acc = golden.accumulate(la, gi[la.node.inputs[0]])
            assert la.acc_range[0] <= acc.min() and acc.max() <= la.acc_range[1], la.name
