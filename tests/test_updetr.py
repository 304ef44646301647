"""UP-DETR pretraining: patch-conditioned queries and their groups, the frozen backbone,
the feature reconstruction loss, config errors, and the hand-off to DETR fine-tuning."""
import logging
import os

import pytest
import torch

import updetr_d2  # noqa: F401
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from updetr_d2 import add_updetr_config
from updetr_d2.config import run_config_checks
from updetr_d2.methods.updetr import UPDETR, FeatureReconstruction, PatchQueries, UpDetr
from updetr_d2.methods.updetr.groups import contiguous_groups, updetr_group_mask
from updetr_d2.solver import build_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "projects", "UPDETR", "configs", "updetr_R18_demo_pretrain.yaml")
FINETUNE = os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml")


def tiny(config=PRETRAIN, **overrides):
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(config)
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD, d.ENC_LAYERS, d.DEC_LAYERS = 32, 2, 64, 1, 2
    d.NUM_OBJECT_QUERIES = 8
    cfg.INPUT.QUERY_PATCH.NUM_PATCHES = 3
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list([item for pair in overrides.items() for item in pair])
    return cfg


def patch_input(num_patches=3, h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((h, w))
    xy = torch.rand(num_patches, 2, generator=g) * torch.tensor([w / 2, h / 2])
    inst.gt_boxes = Boxes(torch.cat([xy, xy + torch.tensor([w / 3, h / 3])], 1))
    inst.gt_classes = torch.zeros(num_patches, dtype=torch.long)
    return {
        "image": torch.randint(0, 255, (3, h, w), generator=g).float(),
        "patches": torch.randint(0, 255, (num_patches, 3, 32, 32), generator=g, dtype=torch.uint8),
        "instances": inst,
    }


def test_training_step_gives_all_losses():
    torch.manual_seed(0)
    model = build_model(tiny())
    assert isinstance(model, UpDetr) and model.heads.class_embed.out_features == 2
    with EventStorage():
        losses = model([patch_input(seed=1), patch_input(seed=2)])
    expected = {f"loss_{n}{s}" for n in ("ce", "bbox", "giou", "feature") for s in ("", "_0")}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())


def test_reconstruction_can_be_switched_off():
    model = build_model(tiny(**{"MODEL.UPDETR.FEATURE_RECONSTRUCTION": False}))
    assert model.feature_align is None
    with EventStorage():
        losses = model([patch_input()])
    assert not any("feature" in k for k in losses)


def test_queries_are_grouped_by_patch_in_order():
    """M=2 patches, N=4 queries: query_pos rows are [f0, f0, f1, f1] + query_embed."""
    gen = PatchQueries(num_queries=4, hidden_dim=3, patch_feature_dim=5, num_patches=2, query_dropout=0.0)
    features = torch.randn(1, 2, 5)
    bundle = gen(features)
    projected = gen.patch2query(features)[0]
    expected = torch.stack([projected[0], projected[0], projected[1], projected[1]]) + gen.query_embed.weight
    assert torch.allclose(bundle.query_pos[0], expected)
    assert bundle.self_attn_mask.tolist() == [[False, False, True, True], [False, False, True, True],
                                              [True, True, False, False], [True, True, False, False]]


def test_query_dropout_rate_is_per_query_slot():
    torch.manual_seed(0)
    gen = PatchQueries(num_queries=50, hidden_dim=4, patch_feature_dim=4, num_patches=5, query_dropout=0.1).train()
    with torch.no_grad():
        gen.query_embed.weight.zero_()
        gen.patch2query.bias.fill_(1.0)
        dropped = (gen(torch.zeros(40, 5, 4)).query_pos == 0).all(-1).float().mean().item()
    assert abs(dropped - 0.1) < 0.02
    gen.eval()
    assert not (gen(torch.zeros(2, 5, 4)).query_pos == 0).all(-1).any()


def test_fewer_patches_keep_the_training_grouping_as_the_original():
    """A model built for 10 patches on 100 queries, given 3: as the original at test time
    (models/updetr.py, eval branch), patch k is added to queries 10k..10k+9, only the first
    3 * 100 // 10 queries are decoded, under the top-left block of the training mask."""
    gen = PatchQueries(num_queries=100, hidden_dim=8, patch_feature_dim=6, num_patches=10).eval()
    features = torch.randn(2, 3, 6)
    bundle = gen(features)
    per_patch, decoded = 100 // 10, 3 * 100 // 10
    expected = gen.patch2query(features).repeat_interleave(per_patch, dim=1) + gen.query_embed.weight[:decoded]
    assert torch.equal(bundle.query_pos, expected)
    assert bundle.meta["query_groups"].tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert torch.equal(bundle.self_attn_mask, updetr_group_mask(100, 10)[:decoded, :decoded])
    assert not torch.equal(bundle.self_attn_mask, updetr_group_mask(100, 3)[:decoded, :decoded])


@pytest.mark.parametrize("num_queries,num_patches", [(100, 10), (10, 3), (8, 8), (20, 4), (7, 1)])
def test_training_with_the_configured_count_is_bit_identical(num_queries, num_patches):
    """Given as many patches as it was built for, the queries are exactly the former
    per-input grouping (all queries split over the given patches), dropout draws included."""
    gen = PatchQueries(num_queries=num_queries, hidden_dim=8, patch_feature_dim=6,
                       num_patches=num_patches, query_dropout=0.1).train()
    features = torch.randn(3, num_patches, 6, requires_grad=True)
    torch.manual_seed(7)
    bundle = gen(features)
    torch.manual_seed(7)
    groups = contiguous_groups(num_queries, num_patches)
    keep = torch.rand(3, num_queries, 1) >= 0.1
    reference = gen.patch2query(features)[:, groups] * keep + gen.query_embed.weight
    assert torch.equal(bundle.query_pos, reference)
    assert torch.equal(bundle.self_attn_mask, updetr_group_mask(num_queries, num_patches))
    assert torch.equal(bundle.meta["query_groups"], groups)
    weights = torch.randn_like(reference)
    grads = [torch.autograd.grad((q * weights).sum(), [features, gen.query_embed.weight])
             for q in (bundle.query_pos, reference)]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_model_given_fewer_patches_decodes_only_their_groups():
    """8 queries in 4 groups of 2: 2 patches -> the 4 queries of groups 0-1, with the
    predictions they have when all 4 patches are given (the groups cannot see each other)."""
    torch.manual_seed(0)
    model = build_model(tiny(**{"INPUT.QUERY_PATCH.NUM_PATCHES": 4}))
    check_fewer_patches_decode_only_their_groups(model)


def check_fewer_patches_decode_only_their_groups(model):
    """``model``: an UP-DETR of any detector built with 8 queries for 4 patches."""
    model.eval()
    assert model.query_generator.num_patches == 4
    full = patch_input(num_patches=4, seed=3)
    two = dict(full, patches=full["patches"][:2])
    with torch.no_grad():
        state_full, state_two = model.run_phases([full]), model.run_phases([two])
        result = model([two])[0]["instances"]
    assert state_two.queries.meta["query_groups"].tolist() == [0, 0, 1, 1]
    assert state_two.outputs["pred_boxes"].shape == (1, 4, 4)
    for key in ("pred_boxes", "pred_logits"):
        torch.testing.assert_close(state_two.outputs[key], state_full.outputs[key][:, :4], rtol=0, atol=1e-5)
    assert result.pred_classes.tolist() == [0, 0, 1, 1]
    model.train()  # and it trains on such inputs (boxes for the given patches only)
    two["instances"] = full["instances"][:2]
    with EventStorage():
        losses = model([two])
    assert all(torch.isfinite(v) for v in losses.values())


def test_changing_one_patch_changes_only_its_group():
    torch.manual_seed(0)
    model = build_model(tiny()).eval()
    a = patch_input(seed=3)
    b = dict(a, patches=a["patches"].clone())
    b["patches"][1] = 255 - b["patches"][1]  # patch 1 only
    with torch.no_grad():
        state_a = model.run_phases([a])
        out_a, out_b = state_a.outputs, model.run_phases([b]).outputs
    groups = state_a.queries.meta["query_groups"]
    changed = (out_a["pred_boxes"][0] != out_b["pred_boxes"][0]).any(-1)
    assert changed[groups == 1].all()
    assert not changed[groups != 1].any()


def test_more_patches_than_queries_is_a_config_error():
    cfg = tiny(**{"INPUT.QUERY_PATCH.NUM_PATCHES": 9, "INPUT.DATASET_MAPPER": "QueryPatchDatasetMapper"})
    with pytest.raises(ValueError, match="NUM_PATCHES=9 .*NUM_OBJECT_QUERIES=8"):
        run_config_checks(cfg)  # what tools/train_net.py runs before building anything
    # the model's groups need it too, whatever the data (one-shot crops here)
    with pytest.raises(ValueError, match="NUM_PATCHES=9"):
        run_config_checks(tiny(**{"INPUT.QUERY_PATCH.NUM_PATCHES": 9, "INPUT.DATASET_MAPPER": "OneShotDatasetMapper"}))
    from detectron2.config import LazyConfig

    lazy = LazyConfig.load(PRETRAIN.replace(".yaml", ".py"))
    run_config_checks(lazy)
    lazy.model.query_generator.num_patches = 2  # the model's count overridden alone
    with pytest.raises(ValueError, match="mapper.num_patches=4 is more than the model.query_generator.num_patches=2"):
        run_config_checks(lazy)
    with pytest.raises(ValueError, match="more patches"):
        build_model(tiny(**{"INPUT.QUERY_PATCH.NUM_PATCHES": 9}))
    model = build_model(tiny()).eval()
    with pytest.raises(ValueError, match="more patches than it has groups"):
        model([patch_input(num_patches=4)])  # built for 3


def test_missing_patches_is_a_clear_error():
    model = build_model(tiny())
    with pytest.raises(ValueError, match="QueryPatchDatasetMapper"):
        model([{"image": torch.rand(3, 32, 32), "instances": patch_input()["instances"]}])


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    cfg = tiny(**{"MODEL.RESNETS.NORM": "BN"})
    model = build_model(cfg).train()
    assert not model.backbone.training and model.transformer.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    transformer_before = model.transformer.state_dict()["decoder.layers.0.linear1.weight"].clone()
    optimizer = build_optimizer(cfg, model)
    with EventStorage():
        loss = sum(model([patch_input(seed=4), patch_input(seed=5)]).values())
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    after = model.backbone.state_dict()
    assert any("running_mean" in k for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(transformer_before, model.transformer.state_dict()["decoder.layers.0.linear1.weight"])


def test_feature_reconstruction_by_hand_and_without_target_gradient():
    term = FeatureReconstruction()
    pred = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]]], requires_grad=True)  # [B=1, Q=3, C=2]
    target = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, -1.0]], requires_grad=True)
    indices = [(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))]
    # orthogonal -> 2, identical direction -> 0, opposite -> 4; divided by num_boxes = 3
    loss = term({"pred_features": pred}, [{"features": target}], indices, num_boxes=3.0)["loss_feature"]
    assert loss.item() == pytest.approx((2 + 0 + 4) / 3)
    loss.backward()
    assert pred.grad is not None and target.grad is None


def test_unfrozen_backbone_gets_no_gradient_from_the_reconstruction_target():
    """With the CNN trainable, loss_feature reaches the patch features only through the
    predicted side (the queries): the gradient is the same as with a detached target."""
    torch.manual_seed(0)
    model = build_model(tiny(**{"MODEL.UPDETR.FREEZE_BACKBONE": False})).train()
    inputs = [patch_input(seed=6)]
    term, indices = FeatureReconstruction(), [(torch.arange(3), torch.arange(3))]
    grads = []
    for detach in (False, True):
        torch.manual_seed(1)  # same query dropout
        with EventStorage():
            state = model.run_phases(inputs)
        outputs, features = state.outputs, state.queries.meta["patch_features"]
        targets = state.targets
        targets[0]["features"] = features[0].detach() if detach else features[0]
        loss = term(outputs, targets, indices, 3.0)["loss_feature"]
        grads.append(torch.autograd.grad(loss, features)[0])
        assert features.requires_grad
    assert torch.count_nonzero(grads[0]) > 0
    assert torch.equal(grads[0], grads[1])


def test_finetuning_starts_from_the_pretrained_transformer(tmp_path, caplog):
    torch.manual_seed(0)
    pretrain_cfg = tiny()
    model = build_model(pretrain_cfg)
    optimizer = build_optimizer(pretrain_cfg, model)
    with EventStorage():
        for seed in range(3):
            loss = sum(model([patch_input(seed=seed)]).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("pretrained")

    finetune_cfg = tiny(FINETUNE)
    finetune_cfg.MODEL.WEIGHTS = str(tmp_path / "pretrained.pth")
    detr = build_model(finetune_cfg)
    class_head = detr.heads.class_embed.weight.clone()
    with caplog.at_level(logging.INFO):
        DetectionCheckpointer(detr).load(finetune_cfg.MODEL.WEIGHTS)
    pretrained, loaded = model.state_dict(), detr.state_dict()
    for key, value in loaded.items():
        if key.startswith(("transformer.", "backbone.", "input_proj.", "heads.bbox_embed.", "query_generator.")):
            assert torch.equal(value, pretrained[key]), key
    assert torch.equal(detr.heads.class_embed.weight, class_head)  # re-initialised, not loaded
    text = caplog.text
    assert "UP-DETR pretraining checkpoint" in text and "patch2query" in text and "feature_align" in text


def test_demo_pretraining_configs_build_the_same_model():
    from detectron2.config import LazyConfig, instantiate

    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(PRETRAIN)
    lazy = LazyConfig.load(PRETRAIN.replace(".yaml", ".py"))
    from_yaml, from_lazy = build_model(cfg), instantiate(lazy.model)
    assert isinstance(from_lazy, UpDetr)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(from_yaml) == shapes(from_lazy)
    assert from_lazy.criterion.weight_dict == from_yaml.criterion.weight_dict
    assert lazy.dataloader.train.mapper.num_patches == cfg.INPUT.QUERY_PATCH.NUM_PATCHES
    # the model's query groups come from the one patch count, in both config systems
    assert from_lazy.query_generator.num_patches == from_yaml.query_generator.num_patches == 4
    lazy.dataloader.train.mapper.num_patches = 2
    assert lazy.model.query_generator.num_patches == 2


def test_r50_pretraining_configs_agree():
    """The paper-size configs (not built: a ResNet-50 is slow to construct) load and agree."""
    from detectron2.config import LazyConfig

    yaml_path = os.path.join(ROOT, "projects", "UPDETR", "configs", "updetr_r50_pretrain.yaml")
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(yaml_path)
    lazy = LazyConfig.load(yaml_path.replace(".yaml", ".py"))
    assert lazy.model._target_ is UpDetr is UPDETR and cfg.MODEL.META_ARCHITECTURE == "UpDetr"
    assert lazy.model.query_generator.num_queries == cfg.MODEL.DETR.NUM_OBJECT_QUERIES == 100
    assert lazy.dataloader.train.mapper.num_patches == cfg.INPUT.QUERY_PATCH.NUM_PATCHES == 10
    assert lazy.model.query_generator.num_patches == 10
    assert lazy.model.transformer.normalize_before and cfg.MODEL.DETR.PRE_NORM
    assert lazy.model.freeze_backbone and cfg.MODEL.UPDETR.FREEZE_BACKBONE
