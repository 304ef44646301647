"""decoder_dependence: the variances equal a direct computation over per-image forward
passes, and a detector that cannot see the image (input projection zeroed) has no
variance across images."""
import numpy as np
import pytest
import torch

import updetr_d2  # noqa: F401
from detectron2.modeling import build_model
from updetr_d2.modeling.diagnostics import decoder_dependence

from helpers import fake_input
from test_detr import tiny_detr_cfg


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    model = build_model(tiny_detr_cfg(num_queries=6))
    inputs = [fake_input(64, 96, [], [], seed=s) for s in range(5)]  # one size: no padding
    return model, inputs


def test_variances_equal_a_direct_computation(model_and_inputs):
    model, inputs = model_and_inputs
    model.train()
    got = decoder_dependence(model, inputs, batch_size=2)
    assert model.training  # left as it was
    model.eval()
    with torch.no_grad():
        hs = np.stack([model.run_phases([x]).decoded.hs[-1][0].numpy() for x in inputs]).astype(np.float64)
    assert got["var_images"] == pytest.approx(hs.var(axis=0, ddof=1).mean(), rel=1e-4)
    assert got["var_queries"] == pytest.approx(hs.var(axis=1, ddof=1).mean(), rel=1e-4)
    assert 0 < got["image_share"] < 1
    weight = model.query_generator.query_embed.weight.detach().numpy()
    assert got["query_norm"] == pytest.approx(np.linalg.norm(weight, axis=1).mean(), rel=1e-5)
    assert got["memory_norm"] > 0
    memory = [model.run_phases([x]).memory.memory[0].double() for x in inputs]
    unit = [m / m.norm(dim=-1, keepdim=True) for m in memory]
    pairs = [(u @ u.T).abs()[~torch.eye(len(u), dtype=torch.bool)].mean().item() for u in unit]
    assert got["memory_cosine"] == pytest.approx(np.mean(pairs), rel=1e-4)
    # Across images: batches of 2, 2, 1 pair 0-1, 1-0, 2-3, 3-2; the lone last image has no partner.
    cross = [(unit[i] @ unit[j].T).abs().mean().item() for i, j in ((0, 1), (1, 0), (2, 3), (3, 2))]
    assert got["memory_cross_cosine"] == pytest.approx(np.mean(cross), rel=1e-4)


def test_a_detector_blind_to_the_image_has_no_variance_across_images(model_and_inputs):
    model, inputs = model_and_inputs
    blind = build_model(tiny_detr_cfg(num_queries=6))
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        blind.input_proj.weight.zero_()
    got = decoder_dependence(blind, inputs)
    assert got["var_images"] == pytest.approx(0.0, abs=1e-10)
    assert got["image_share"] == pytest.approx(0.0, abs=1e-8)
    # ... and its encoder (values from a zero input; positions enter queries and keys
    # only) gives every position the same token.
    assert got["memory_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert got["memory_cross_cosine"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="at least 2 images"):
        decoder_dependence(blind, inputs[:1])
