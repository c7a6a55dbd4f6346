import os

import numpy as np
import pytest

from fxpga.quant import artifact, data, frontend, quantizer, zoo


@pytest.fixture(scope="session")
def digits():
    return data.digits()


@pytest.fixture(scope="session")
def digits_model():
    model, _ = zoo.builtin("digits-cnn")
    return model


@pytest.fixture(scope="session")
def digits_graph(digits_model, digits):
    return frontend.from_module(digits_model, digits.sample_shape)


@pytest.fixture(scope="session")
def digits_q8(digits_graph, digits):
    """digits-cnn in Qiu et al.'s formats (the qiu scheme: signed, one weight fl a layer),
    which the tests that edit a .fxq's per-layer fields rely on. The default scheme's own
    tests quantize with it (test_unsigned, test_per_channel, the MLPerf Tiny models)."""
    return quantizer.quantize_model(digits_graph, digits.x_calib, quantizer.Widths(8), scheme="qiu")


@pytest.fixture(scope="session")
def digits_fxq(tmp_path_factory, digits_q8):
    """digits_q8 saved as a .fxq that records its dataset (for commands that read one)."""
    p = tmp_path_factory.mktemp("m") / "d.fxq"
    digits_q8.provenance["dataset"] = "digits"
    artifact.save(digits_q8, p)
    return p


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_configure(config):
    # Under pytest-xdist each worker is a process of its own: one torch thread each, so that
    # N workers on N cores do not oversubscribe them.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def torchvision_models():
    """``torchvision.models``, for model definitions written elsewhere.

    The torchvision wheels on PyPI are CUDA builds: their C extension needs libtorch_cuda, which
    the CPU torch lacks, and the package then fails to import where it registers fake kernels
    for two of that extension's ops (``nms``, ``qnms``). The models themselves are plain torch,
    so those two op schemas are declared here (never run) and the import goes through."""
    import warnings

    import torch

    try:
        import torchvision
    except RuntimeError:
        import sys

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchvision
        torchvision._fxpga_op_schemas = lib  # keep the definitions alive
    return torchvision.models
