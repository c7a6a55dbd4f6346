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
    return quantizer.quantize_model(digits_graph, digits.x_calib, quantizer.Widths(8))


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
