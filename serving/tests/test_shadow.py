"""Shadow mode in one web process (no services): which predictions the candidate runs on,
and that its failure never fails a prediction. Real ONNX Runtime sessions of tiny models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from mlops_serving.config import Config, ConfigError
from mlops_serving.model import Loaded, ModelInfo, open_session
from mlops_serving.service import shadow_prediction
from onnx import TensorProto, helper


def tiny_model(path, favourite: int, pixels: int = 784):
    """Flatten, then a matrix that sends any ink to one digit."""
    weights = np.zeros((pixels, 10), np.float32)
    weights[:, favourite] = 1.0
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])],
        [helper.make_tensor("weights", TensorProto.FLOAT, weights.shape, weights.flatten())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


class Holder:
    def __init__(self, current):
        self.current = current


@pytest.fixture
def models(tmp_path):
    def load(version: str, favourite: int):
        info = ModelInfo(version, "data-v2", "0.9", "sha")
        return open_session(tiny_model(tmp_path / f"{version}.onnx", favourite), info)

    return load("1", 3), load("2", 7)


BATCH = np.ones((1, 1, 28, 28), np.float32)


def test_the_candidate_predicts_beside_production(models):
    production, candidate = models
    assert shadow_prediction(Holder(candidate), production, BATCH) == ("2", 7)
    assert shadow_prediction(None, production, BATCH) is None
    assert shadow_prediction(Holder(None), production, BATCH) is None
    # Right after a promotion both aliases name the same version: nothing to compare.
    assert shadow_prediction(Holder(production), production, BATCH) is None


def test_a_share_of_the_predictions_is_shadowed(models):
    production, candidate = models
    runs = [shadow_prediction(Holder(candidate), production, BATCH, 0.25) for _ in range(2000)]
    assert 0.2 < sum(run is not None for run in runs) / len(runs) < 0.3
    assert shadow_prediction(Holder(candidate), production, BATCH, 0.0) is None


def test_a_failing_candidate_never_fails_the_prediction(models, tmp_path, caplog):
    production, _ = models
    info = ModelInfo("9", "data-v2", "0.9", "sha")
    # Asked for an input it does not have: ONNX Runtime raises on every run.
    session = open_session(tiny_model(tmp_path / "broken.onnx", 1), info).session
    broken = Loaded(info, session, "no-such-input", 0.0)
    assert shadow_prediction(Holder(broken), production, BATCH) is None
    assert "the shadow model (version 9) failed" in caplog.text


@pytest.mark.parametrize("raw", ["1.5", "-0.1", "nan"])
def test_a_shadow_share_outside_0_to_1_is_refused(raw):
    environ = {
        "MLOPS_SECRET_KEY": "k",
        "MLOPS_DATABASE_URL": "postgresql://x",
        "MLOPS_S3_ENDPOINT": "http://x",
        "MLOPS_SHADOW_SHARE": raw,
    }
    with pytest.raises(ConfigError, match="MLOPS_SHADOW_SHARE"):
        Config.from_env(environ)
