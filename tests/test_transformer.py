"""Position encodings and the shared DETR transformer (tiny sizes, CPU)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from updetr_d2.layers.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from updetr_d2.layers.transformer import (
    MultiheadAttention,
    Transformer,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
    build_attention_mask,
)

D, NHEAD, FF = 32, 2, 64


def _transformer(normalize_before=False, return_intermediate=True, dropout=0.1):
    torch.manual_seed(0)
    return Transformer(
        d_model=D,
        nhead=NHEAD,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=FF,
        dropout=dropout,
        normalize_before=normalize_before,
        return_intermediate_dec=return_intermediate,
    )


def _inputs(B=2, H=3, W=4, Q=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(B, D, H, W, generator=g)
    mask = torch.zeros(B, H, W, dtype=torch.bool)
    mask[1, :, W - 1 :] = True  # image 1: last column padded
    mask[1, H - 1 :, :] = True  # and last row
    pos = PositionEmbeddingSine(D // 2)(mask)
    query_pos = torch.randn(Q, D, generator=g)
    return src, mask, query_pos, pos


# ---------------------------------------------------------------- position encodings


def _sine_reference(mask, num_pos_feats, temperature, normalize, scale, eps=1e-6):
    """Per pixel, with explicit loops."""
    B, H, W = mask.shape
    out = torch.zeros(B, 2 * num_pos_feats, H, W, dtype=torch.float64)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                y = sum(1 for r in range(i + 1) if not mask[b, r, j])
                x = sum(1 for c in range(j + 1) if not mask[b, i, c])
                if normalize:
                    height = sum(1 for r in range(H) if not mask[b, r, j])
                    width = sum(1 for c in range(W) if not mask[b, i, c])
                    y = y / (height + eps) * scale
                    x = x / (width + eps) * scale
                for k in range(num_pos_feats):
                    freq = temperature ** (2 * (k // 2) / num_pos_feats)
                    fn = math.sin if k % 2 == 0 else math.cos
                    out[b, k, i, j] = fn(y / freq)
                    out[b, num_pos_feats + k, i, j] = fn(x / freq)
    return out


@pytest.mark.parametrize("normalize", [True, False])
def test_sine_matches_loop_reference(normalize):
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    emb = PositionEmbeddingSine(num_pos_feats=8, temperature=100, normalize=normalize)(mask)
    assert emb.shape == (2, 16, 3, 5) and emb.dtype == torch.float32
    ref = _sine_reference(mask, 8, 100, normalize, 2 * math.pi)
    torch.testing.assert_close(emb.double(), ref, atol=1e-5, rtol=0)


def test_sine_padded_mask_matches_loop_reference():
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[0, :, 3:] = True
    mask[1, 2:, :] = True
    emb = PositionEmbeddingSine(num_pos_feats=6, normalize=True)(mask)
    ref = _sine_reference(mask, 6, 10000, True, 2 * math.pi)
    torch.testing.assert_close(emb.double(), ref, atol=1e-5, rtol=0)


def test_sine_default_shape_and_dtype():
    mask = torch.zeros(3, 7, 9, dtype=torch.bool)
    emb = PositionEmbeddingSine()(mask)
    assert emb.shape == (3, 256, 7, 9)
    assert emb.is_contiguous()
    assert PositionEmbeddingSine(16)(mask, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError):
        PositionEmbeddingSine(7)


@pytest.mark.parametrize("normalize", [False, True])
def test_sine_padding_does_not_shift_valid_pixels(normalize):
    pe = PositionEmbeddingSine(num_pos_feats=8, normalize=normalize)
    h, w = 3, 4
    small = pe(torch.zeros(1, h, w, dtype=torch.bool))
    # the same image in a batch padded to 5x7 (padding right and bottom)
    mask = torch.ones(2, 5, 7, dtype=torch.bool)
    mask[0, :h, :w] = False
    mask[1] = False
    big = pe(mask)
    torch.testing.assert_close(big[0:1, :, :h, :w], small, atol=1e-6, rtol=0)
    # the unpadded image of the batch is not affected by its neighbour
    torch.testing.assert_close(big[1:2], pe(torch.zeros(1, 5, 7, dtype=torch.bool)))


def test_learned_shape_order_and_error():
    pe = PositionEmbeddingLearned(num_pos_feats=6, max_size=10)
    emb = pe(torch.zeros(2, 4, 7, dtype=torch.bool))
    assert emb.shape == (2, 12, 4, 7)
    # columns first, then rows (DETR's order)
    torch.testing.assert_close(emb[1, :6, 2, 5], pe.col_embed.weight[5])
    torch.testing.assert_close(emb[0, 6:, 3, 1], pe.row_embed.weight[3])
    emb.sum().backward()
    grad = pe.col_embed.weight.grad
    assert grad[:7].abs().sum() > 0 and grad[7:].abs().sum() == 0
    with pytest.raises(ValueError, match="max_size"):
        pe(torch.zeros(1, 11, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_size"):
        pe(torch.zeros(1, 3, 11, dtype=torch.bool))
    assert pe(torch.zeros(1, 10, 10, dtype=torch.bool)).shape == (1, 12, 10, 10)


# ---------------------------------------------------------------- attention


def _mha_pair(dropout=0.0):
    torch.manual_seed(0)
    ours = MultiheadAttention(D, NHEAD, dropout=dropout)
    ref = nn.MultiheadAttention(D, NHEAD, dropout=dropout)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.3)
    ref.load_state_dict(ours.state_dict())  # same names and shapes, both ways
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def test_mha_state_dict_compatible():
    ours, ref = MultiheadAttention(D, NHEAD), nn.MultiheadAttention(D, NHEAD)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for k, v in ours.state_dict().items():
        assert v.shape == ref.state_dict()[k].shape
    assert ours.in_proj_bias.abs().sum() == 0 and ours.out_proj.bias.abs().sum() == 0


@pytest.mark.parametrize("mode", ["self_qkv", "self_qk", "cross"])
def test_mha_matches_nn_multihead_attention(mode):
    ours, ref = _mha_pair()
    g = torch.Generator().manual_seed(3)
    L, S, B = 5, 7, 3
    x = torch.randn(L, B, D, generator=g)
    pos = torch.randn(L, B, D, generator=g)
    mem = torch.randn(S, B, D, generator=g)
    if mode == "self_qkv":
        q = k = v = x
    elif mode == "self_qk":
        q = k = x + pos
        v = x
    else:
        q, k, v = x + pos, mem + torch.randn(S, B, D, generator=g), mem
    S_ = k.shape[0]
    kpm = torch.zeros(B, S_, dtype=torch.bool)
    kpm[1, -2:] = True
    blocked = torch.rand(B * NHEAD, L, S_, generator=g) < 0.3
    blocked[..., 0] = False  # keep a key for every query
    for use_blocked, use_kpm in [(False, False), (False, True), (True, False), (True, True)]:
        am = blocked if use_blocked else None
        kp = kpm if use_kpm else None
        for train in (False, True):  # dropout 0: both modes must match
            ours.train(train)
            ref.train(train)
            out = ours(q, k, v, build_attention_mask(am, kp, num_heads=NHEAD))
            expected = ref(q, k, v, attn_mask=am, key_padding_mask=kp)[0]
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_mha_rejects_raw_masks():
    ours, _ = _mha_pair()
    x = torch.randn(4, 2, D)
    with pytest.raises(ValueError, match="build_attention_mask"):
        ours(x, x, x, torch.zeros(4, 4, dtype=torch.bool))


def test_build_attention_mask_conventions():
    assert build_attention_mask(None, None, num_heads=2) is None
    assert build_attention_mask(torch.zeros(3, 3, dtype=torch.bool), num_heads=2) is None
    kpm = torch.tensor([[False, False, True], [False, False, False]])
    m = build_attention_mask(key_padding_mask=kpm, num_heads=2)
    assert m.shape == (2, 1, 1, 3) and m.dtype == torch.bool
    assert torch.equal(m[:, 0, 0], ~kpm)  # True = may attend
    with pytest.raises(ValueError, match="boolean"):
        build_attention_mask(torch.zeros(3, 3), num_heads=2)
    with pytest.raises(ValueError, match="num_heads"):
        build_attention_mask(torch.zeros(5, 3, 3, dtype=torch.bool), num_heads=2)


def test_fully_blocked_row_raises():
    blocked = torch.zeros(4, 4, dtype=torch.bool)
    blocked[2] = True
    with pytest.raises(ValueError, match="blocks every key"):
        build_attention_mask(blocked, num_heads=2)
    # through the transformer: decoder self-attention mask ...
    model = _transformer().eval()
    src, mask, query_pos, pos = _inputs(Q=4)
    with pytest.raises(ValueError, match="blocks every key"):
        model(src, mask, query_pos, pos, self_attn_mask=blocked)
    # ... and a fully padded image
    mask = mask.clone()
    mask[0] = True
    with pytest.raises(ValueError, match="blocks every key"):
        model(src, mask, query_pos, pos)
    # per-(image, head) masks: one head of one image fully blocked
    blocked3 = torch.zeros(2 * NHEAD, 4, 4, dtype=torch.bool)
    blocked3[3, 1] = True
    with pytest.raises(ValueError, match="blocks every key"):
        build_attention_mask(blocked3, num_heads=NHEAD)


# ---------------------------------------------------------------- layers


def _ref_mha(x_q, x_k, x_v, attn, key_padding_mask=None, attn_mask=None):
    return F.multi_head_attention_forward(
        x_q, x_k, x_v, D, NHEAD,
        attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias,
        training=False, key_padding_mask=key_padding_mask, need_weights=False, attn_mask=attn_mask,
    )[0]


def _ln(x, norm):
    return F.layer_norm(x, (D,), norm.weight, norm.bias, norm.eps)


def _randomize(module):
    torch.manual_seed(5)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
    return module


def test_decoder_layer_post_norm_matches_reference():
    layer = _randomize(TransformerDecoderLayer(D, NHEAD, FF, dropout=0.1)).eval()
    g = torch.Generator().manual_seed(2)
    Q, S, B = 5, 9, 2
    tgt, qpos = torch.randn(Q, B, D, generator=g), torch.randn(Q, B, D, generator=g)
    mem, pos = torch.randn(S, B, D, generator=g), torch.randn(S, B, D, generator=g)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[0, 6:] = True
    blocked = torch.zeros(Q, Q, dtype=torch.bool)
    blocked[:2, 2:] = True
    blocked[2:, :2] = True

    out = layer(
        tgt, mem, query_pos=qpos, pos=pos,
        self_attn_mask=build_attention_mask(blocked, num_heads=NHEAD),
        memory_mask=build_attention_mask(key_padding_mask=kpm, num_heads=NHEAD),
    )

    # plain DETR post-norm math
    t = tgt
    t = _ln(t + _ref_mha(t + qpos, t + qpos, t, layer.self_attn, attn_mask=blocked), layer.norm1)
    cross = _ref_mha(t + qpos, mem + pos, mem, layer.multihead_attn, key_padding_mask=kpm)
    t = _ln(t + cross, layer.norm2)
    hidden = F.relu(F.linear(t, layer.linear1.weight, layer.linear1.bias))
    ff = F.linear(hidden, layer.linear2.weight, layer.linear2.bias)
    t = _ln(t + ff, layer.norm3)
    torch.testing.assert_close(out, t, atol=1e-5, rtol=1e-5)


def test_decoder_layer_pre_norm_matches_reference():
    layer = _randomize(TransformerDecoderLayer(D, NHEAD, FF, normalize_before=True)).eval()
    g = torch.Generator().manual_seed(4)
    Q, S, B = 4, 6, 2
    tgt, qpos = torch.randn(Q, B, D, generator=g), torch.randn(Q, B, D, generator=g)
    mem, pos = torch.randn(S, B, D, generator=g), torch.randn(S, B, D, generator=g)
    out = layer(tgt, mem, query_pos=qpos, pos=pos)
    t = tgt
    x = _ln(t, layer.norm1)
    t = t + _ref_mha(x + qpos, x + qpos, x, layer.self_attn)
    x = _ln(t, layer.norm2)
    t = t + _ref_mha(x + qpos, mem + pos, mem, layer.multihead_attn)
    x = _ln(t, layer.norm3)
    t = t + layer.linear2(F.relu(layer.linear1(x)))
    torch.testing.assert_close(out, t, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalize_before", [False, True])
def test_encoder_layer_matches_reference(normalize_before):
    layer = TransformerEncoderLayer(D, NHEAD, FF, normalize_before=normalize_before)
    layer = _randomize(layer).eval()
    g = torch.Generator().manual_seed(6)
    S, B = 7, 2
    src, pos = torch.randn(S, B, D, generator=g), torch.randn(S, B, D, generator=g)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[1, 4:] = True
    out = layer(src, pos=pos, attn_mask=build_attention_mask(key_padding_mask=kpm, num_heads=NHEAD))

    def ffn(x):
        return layer.linear2(F.relu(layer.linear1(x)))

    if normalize_before:
        x = _ln(src, layer.norm1)
        s = src + _ref_mha(x + pos, x + pos, x, layer.self_attn, key_padding_mask=kpm)
        s = s + ffn(_ln(s, layer.norm2))
    else:
        attn = _ref_mha(src + pos, src + pos, src, layer.self_attn, key_padding_mask=kpm)
        s = _ln(src + attn, layer.norm1)
        s = _ln(s + ffn(s), layer.norm2)
    torch.testing.assert_close(out, s, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- transformer


@pytest.mark.parametrize("normalize_before", [False, True])
@pytest.mark.parametrize("intermediate", [True, False])
def test_transformer_shapes(normalize_before, intermediate):
    model = _transformer(normalize_before, intermediate)
    src, mask, query_pos, pos = _inputs(B=2, H=3, W=4, Q=5)
    hs, memory = model(src, mask, query_pos, pos)
    assert hs.shape == ((2 if intermediate else 1), 2, 5, D)
    assert memory.shape == (2, D, 3, 4)
    assert (model.encoder.norm is not None) == normalize_before
    assert torch.isfinite(hs).all() and torch.isfinite(memory).all()
    # the last intermediate output is the (normalized) final output
    if intermediate:
        model.eval()
        hs, _ = model(src, mask, query_pos, pos)
        model.decoder.return_intermediate = False
        last, _ = model(src, mask, query_pos, pos)
        torch.testing.assert_close(hs[-1:], last)


def test_transformer_parameter_names_and_init():
    model = _transformer()
    keys = set(model.state_dict())
    for k in [
        "encoder.layers.1.self_attn.in_proj_weight",
        "encoder.layers.0.self_attn.out_proj.weight",
        "encoder.layers.0.linear1.weight",
        "encoder.layers.0.norm2.bias",
        "decoder.layers.1.multihead_attn.in_proj_bias",
        "decoder.layers.0.norm3.weight",
        "decoder.norm.weight",
    ]:
        assert k in keys
    assert not any(k.startswith("encoder.norm") for k in keys)
    pre_norm_keys = _transformer(normalize_before=True).state_dict()
    assert any(k.startswith("encoder.norm") for k in pre_norm_keys)
    w = model.decoder.layers[0].linear1.weight  # [FF, D], xavier bound sqrt(6 / (FF + D))
    assert w.abs().max() <= math.sqrt(6 / (FF + D)) + 1e-6
    assert w.abs().max() > 0.5 * math.sqrt(6 / (FF + D))


@pytest.mark.parametrize("normalize_before", [False, True])
def test_padded_memory_does_not_affect_outputs(normalize_before):
    model = _transformer(normalize_before).eval()
    src, mask, query_pos, pos = _inputs()
    hs, memory = model(src, mask, query_pos, pos)
    src2 = src.clone()
    noise = torch.randn_like(src) * 10
    src2 = torch.where(mask.unsqueeze(1), noise, src2)
    assert not torch.equal(src2, src)
    hs2, memory2 = model(src2, mask, query_pos, pos)
    torch.testing.assert_close(hs2, hs, atol=1e-5, rtol=1e-5)
    valid = (~mask).unsqueeze(1).expand_as(memory)
    torch.testing.assert_close(memory2[valid], memory[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("per_head", [False, True])
def test_block_diagonal_self_attn_mask_isolates_groups(per_head):
    model = _transformer().eval()
    Q = 6
    src, mask, query_pos, pos = _inputs(Q=Q)
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    blocked = group[:, None] != group[None, :]  # True = different group = may not attend
    if per_head:
        blocked = blocked.expand(2 * NHEAD, Q, Q)
    hs, _ = model(src, mask, query_pos, pos, self_attn_mask=blocked)
    qp2 = query_pos.clone()
    qp2[3:] += torch.randn(3, D)
    hs2, _ = model(src, mask, qp2, pos, self_attn_mask=blocked)
    torch.testing.assert_close(hs2[:, :, :3], hs[:, :, :3], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(hs2[:, :, 3:], hs[:, :, 3:], atol=1e-3)
    # without the mask, group 1 does see group 2
    hs3, _ = model(src, mask, query_pos, pos)
    hs4, _ = model(src, mask, qp2, pos)
    assert not torch.allclose(hs4[:, :, :3], hs3[:, :, :3], atol=1e-3)


def test_per_image_mask_only_affects_its_image():
    model = _transformer().eval()
    Q = 4
    src, mask, query_pos, pos = _inputs(Q=Q)
    blocked = torch.zeros(2 * NHEAD, Q, Q, dtype=torch.bool)
    blocked[NHEAD:, :2, 2:] = True  # image 1 only
    blocked[NHEAD:, 2:, :2] = True
    hs, _ = model(src, mask, query_pos, pos, self_attn_mask=blocked)
    ref, _ = model(src, mask, query_pos, pos)
    torch.testing.assert_close(hs[:, 0], ref[:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(hs[:, 1], ref[:, 1], atol=1e-3)


def test_per_image_query_pos_and_tgt_equal_shared():
    model = _transformer(normalize_before=True).eval()
    src, mask, query_pos, pos = _inputs(Q=5)
    hs, mem = model(src, mask, query_pos, pos)
    hs2, mem2 = model(src, mask, query_pos.unsqueeze(0).expand(2, -1, -1), pos)
    torch.testing.assert_close(hs2, hs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mem2, mem)
    # tgt zeros given explicitly, shared or per image
    hs3, _ = model(src, mask, query_pos, pos, tgt=torch.zeros(5, D))
    hs4, _ = model(src, mask, query_pos, pos, tgt=torch.zeros(2, 5, D))
    torch.testing.assert_close(hs3, hs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(hs4, hs, atol=1e-6, rtol=1e-6)
    # a different query_pos for one image changes only that image
    qp = query_pos.unsqueeze(0).repeat(2, 1, 1)
    qp[1] += 1.0
    hs5, _ = model(src, mask, qp, pos)
    torch.testing.assert_close(hs5[:, 0], hs[:, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(hs5[:, 1], hs[:, 1], atol=1e-3)
    with pytest.raises(ValueError, match="query_pos"):
        model(src, mask, torch.zeros(3, 5, D), pos)


def test_batch_consistency_and_backward():
    """An image gives the same output alone as in a padded batch; gradients reach all parameters."""
    model = _transformer().eval()
    src, mask, query_pos, pos = _inputs()
    hs, _ = model(src, mask, query_pos, pos)
    # image 1 is valid in [:2, :3]: run it alone, unpadded
    src1 = src[1:2, :, :2, :3].contiguous()
    mask1 = torch.zeros(1, 2, 3, dtype=torch.bool)
    hs1, _ = model(src1, mask1, query_pos, PositionEmbeddingSine(D // 2)(mask1))
    torch.testing.assert_close(hs1[:, 0], hs[:, 1], atol=1e-5, rtol=1e-5)

    model.train()
    hs, memory = model(src, mask, query_pos.requires_grad_(), pos)
    (hs.sum() + memory.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert query_pos.grad.abs().sum() > 0
