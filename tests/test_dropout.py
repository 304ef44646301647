"""The CPU dropout with a cheaper mask (layers/dropout.py) and the attention that uses it:
the keep rate and scale of nn.Dropout, gradients through the same mask, reproducible from
the seed, identity in eval, and attention equal to scaled_dot_product_attention once the
mask is fixed."""
import pytest
import torch
import torch.nn.functional as F

import updetr_d2  # noqa: F401
from updetr_d2.layers import dropout as dropout_module
from updetr_d2.layers.attention import MultiheadAttention, attention_with_cpu_dropout, build_attention_mask
from updetr_d2.layers.dropout import Dropout, dropout, keep_mask
from updetr_d2.layers.transformer import Transformer


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_scale_match_nn_dropout(p):
    torch.manual_seed(0)
    n = 2_000_000
    kept = keep_mask((n,), p).float().mean().item()
    # binomial standard deviation over n draws, plus p's rounding to 2^-15
    assert abs(kept - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5 + 2 ** -15
    x = torch.ones(1000, 100)
    y = dropout(x, p)
    values = torch.unique(y)
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / (1 - p))
    assert y.shape == x.shape


def test_lanes_are_independent_of_each_other():
    """Neighbouring elements come from the two halves of one random integer: they must not
    be correlated (the rate of both kept is the product of the rates)."""
    torch.manual_seed(1)
    m = keep_mask((1_000_000,), 0.5).view(-1, 2).float()
    both = (m[:, 0] * m[:, 1]).mean().item()
    assert abs(both - 0.25) < 0.003


def test_gradient_goes_through_the_same_mask_and_eval_is_identity():
    torch.manual_seed(2)
    x = torch.randn(64, 32, requires_grad=True)
    y = dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    kept = y != 0
    assert torch.allclose(x.grad, kept.float() / 0.7)
    assert torch.equal(dropout(x, 0.3, training=False), x)
    assert torch.equal(dropout(x, 0.0), x)
    module = Dropout(0.3).eval()
    assert torch.equal(module(x), x)


def test_the_same_seed_gives_the_same_mask_and_bf16_works():
    torch.manual_seed(3)
    a = keep_mask((10, 7), 0.2)
    torch.manual_seed(3)
    assert torch.equal(a, keep_mask((10, 7), 0.2))
    x = torch.randn(33, 17, dtype=torch.bfloat16)  # odd element count: the last lane is cut
    y = dropout(x, 0.25)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


def test_attention_equals_sdpa_when_the_mask_keeps_everything(monkeypatch):
    torch.manual_seed(4)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    blocked = torch.zeros(2, 7, dtype=torch.bool)
    blocked[1, 5:] = True  # padded keys of the second image
    mask = build_attention_mask(key_padding_mask=blocked, num_heads=4, batch=2, tgt_len=5, src_len=7)
    monkeypatch.setattr(dropout_module, "keep_mask", lambda shape, p: torch.ones(shape, dtype=torch.bool))
    ours = attention_with_cpu_dropout(q, k, v, mask, 0.2)
    assert torch.allclose(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask) / 0.8, atol=1e-5)


def test_attention_drops_weights_with_the_mask_and_rescales():
    torch.manual_seed(5)
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    torch.manual_seed(6)
    ours = attention_with_cpu_dropout(q, k, v, None, 0.5)
    torch.manual_seed(6)
    kept = keep_mask((1, 2, 3, 6), 0.5)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 2.0, -1)
    assert torch.allclose(ours, (weights * kept) @ v / 0.5, atol=1e-6)


def test_transformer_layers_use_it_and_keep_their_keys():
    t = Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
                    dropout=0.1)
    dropouts = [m for m in t.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(isinstance(m, Dropout) for m in dropouts)
    assert not any("dropout" in key for key in t.state_dict())
    attn = MultiheadAttention(16, 2, dropout=0.1).train()
    x = torch.randn(5, 2, 16)
    torch.manual_seed(7)
    a = attn(x, x, x)
    torch.manual_seed(7)
    assert torch.equal(a, attn(x, x, x))  # reproducible under the seed
