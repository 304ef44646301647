"""UP-DETR's random query patch detection on Deformable DETR (DeformableUpDetr): training
losses, patch point queries, group isolation in the deformable decoder, fewer patches,
inference, the hand-off to a fine-tuned DeformableDetr, and the configs end to end."""
import os
import subprocess
import sys

import pytest
import torch

import updetr_d2  # noqa: F401
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from updetr_d2 import add_updetr_config
from updetr_d2.checkpoint import DetrCheckpointer
from updetr_d2.checkpoint.skip import check_skip_prefixes
from updetr_d2.config import run_config_checks
from updetr_d2.methods.updetr import DeformableUpDetr, PatchPointQueries, held_out_patch_metrics
from updetr_d2.methods.updetr.checkpoint import DEFORMABLE_ENCODER_HANDOFF_SKIP, ENCODER_HANDOFF_SKIP
from updetr_d2.methods.updetr.groups import updetr_group_mask
from updetr_d2.modeling import DeformableDetr, LearnedPointQueries
from updetr_d2.solver import build_optimizer

from test_updetr import check_fewer_patches_decode_only_their_groups, patch_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPDETR_CONFIGS = os.path.join(ROOT, "projects", "UPDETR", "configs")
DEFORMABLE_DEMO = os.path.join(ROOT, "projects", "DeformableDETR", "configs", "deformable_detr_R18_demo.yaml")
DEMO_PRETRAIN = os.path.join(UPDETR_CONFIGS, "updetr_deformable_effnet_lite0_demo_pretrain.yaml")
DEMO_FINETUNE = os.path.join(UPDETR_CONFIGS, "deformable_detr_effnet_lite0_demo_finetune.yaml")
# The pretraining model's parameters that the fine-tuned Deformable DETR does not have.
PRETRAINING_ONLY = ("query_generator.patch2query.", "feature_align.")


def tiny(arch="DeformableUpDetr", **overrides):
    """The demo Deformable DETR (ResNet-18 GN from scratch, 3 levels, box refinement)
    shrunk to train in seconds: 32 wide, 1+2 layers, 8 queries in 3 patch groups."""
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(DEFORMABLE_DEMO)
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD = 32, 4, 64
    d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_OBJECT_QUERIES, d.DROPOUT = 1, 2, 8, 0.0
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.INPUT.QUERY_PATCH.NUM_PATCHES = 3
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list([item for pair in overrides.items() for item in pair])
    return cfg


def load_yaml(path, *overrides):
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(overrides))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_a_few_training_steps_give_finite_losses_and_keep_the_backbone_frozen():
    torch.manual_seed(0)
    cfg = tiny(**{"SOLVER.BASE_LR": 1e-3})
    model = build_model(cfg).train()
    assert isinstance(model, DeformableUpDetr) and isinstance(model, DeformableDetr)
    assert isinstance(model.query_generator, PatchPointQueries)
    assert model.heads.class_embed[0].out_features == 1  # the one "patch" class, sigmoid focal
    assert model.criterion.weight_dict["loss_feature"] == cfg.MODEL.UPDETR.RECONSTRUCTION_WEIGHT
    assert not model.heads.share  # box refinement (the demo's)
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = build_optimizer(cfg, model)
    inputs = [patch_input(seed=1), patch_input(seed=2)]
    expected = {f"loss_{n}{s}" for n in ("focal", "bbox", "giou", "feature") for s in ("", "_0")}
    with EventStorage():
        for _ in range(3):
            losses = model(inputs)
            assert set(losses) == expected
            assert all(torch.isfinite(v) for v in losses.values())
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone.items())
    assert model.query_generator.patch2query.weight.grad.abs().sum() > 0


def test_patch_point_queries_add_the_patch_to_query_pos_only():
    """query_pos = patch feature of the group + learned query_pos; tgt and reference points
    are the learned ones, the same whatever the patches (an image-independent prior)."""
    gen = PatchPointQueries(num_queries=4, hidden_dim=3, patch_feature_dim=5, num_patches=2, query_dropout=0.0)
    features = torch.randn(2, 2, 5)
    bundle, other = gen(features), gen(torch.randn(2, 2, 5))
    pos, tgt = gen.query_embed.weight.split(3, dim=1)
    projected = gen.patch2query(features)
    assert torch.allclose(bundle.query_pos, projected[:, [0, 0, 1, 1]] + pos)
    assert torch.equal(bundle.tgt, tgt) and torch.equal(other.tgt, tgt)
    assert torch.equal(bundle.reference_points, gen.reference_points(pos).sigmoid())
    assert torch.equal(bundle.reference_points, other.reference_points)
    assert torch.equal(bundle.self_attn_mask, updetr_group_mask(4, 2))
    assert bundle.meta["query_groups"].tolist() == [0, 0, 1, 1]
    # what a Deformable DETR's point queries hold, under the same names
    learned = LearnedPointQueries(num_queries=4, hidden_dim=3)
    shared = {k: tuple(v.shape) for k, v in gen.state_dict().items() if not k.startswith("patch2query.")}
    assert shared == {k: tuple(v.shape) for k, v in learned.state_dict().items()}


def test_patches_are_pooled_from_the_last_level_the_detector_reads():
    """res3-res5 -> res5's 512 channels; reading res3-res4 -> res4's 256."""
    for levels, channels in ((["res3", "res4", "res5"], 512), (["res3", "res4"], 256)):
        cfg = tiny(**{"MODEL.DEFORMABLE_DETR.IN_FEATURES": levels, "MODEL.RESNETS.OUT_FEATURES": levels})
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        assert model.query_generator.patch2query.in_features == channels
        assert model.feature_align.layers[-1].out_features == channels
        x = patch_input(seed=3)
        with torch.no_grad():
            pooled = model.patch_features([x])
            normalised = (x["patches"].float() - model.pixel_mean) / model.pixel_std
            expected = model.backbone.backbone(normalised)[levels[-1]].mean(dim=(2, 3))
        assert pooled.shape == (1, 3, channels)
        torch.testing.assert_close(pooled[0], expected)


def test_changing_one_patch_changes_only_its_group():
    """The group mask keeps groups apart through the deformable decoder, box refinement
    included: with query dropout off, patch 1 moves only group 1's outputs."""
    torch.manual_seed(0)
    model = build_model(tiny()).eval()
    with torch.no_grad():  # box heads start at zero (boxes = references): give them a say
        for head in model.heads.bbox_embed:
            head.layers[-1].weight.normal_(std=0.1)
    a = patch_input(seed=3)
    b = dict(a, patches=a["patches"].clone())
    b["patches"][1] = 255 - b["patches"][1]
    with torch.no_grad():
        state_a = model.run_phases([a])
        state_b = model.run_phases([b])
    groups = state_a.queries.meta["query_groups"]
    assert groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    for key in ("pred_boxes", "pred_logits"):
        changed = (state_a.outputs[key][0] != state_b.outputs[key][0]).any(-1)
        assert changed[groups == 1].all(), key
        assert not changed[groups != 1].any(), key
    hs_changed = (state_a.decoded.hs != state_b.decoded.hs).any(-1)[:, 0]  # every layer
    assert not hs_changed[:, groups != 1].any()


def test_fewer_patches_decode_only_the_first_groups():
    """8 queries in 4 groups of 2, given 2 patches: the 4 queries of groups 0-1, with the
    outputs they have when all 4 patches are given (the same check as UpDetr's)."""
    torch.manual_seed(0)
    check_fewer_patches_decode_only_their_groups(build_model(tiny(**{"INPUT.QUERY_PATCH.NUM_PATCHES": 4})))


def test_inference_scores_are_patch_probabilities_and_classes_are_groups():
    torch.manual_seed(0)
    model = build_model(tiny()).eval()
    x = patch_input(seed=4)
    with torch.no_grad():
        state = model.run_phases([x])
        result = model([x])[0]["instances"]
    assert len(result) == 8  # one detection per query, not Deformable DETR's top-k
    assert ((result.scores >= 0) & (result.scores <= 1)).all()
    torch.testing.assert_close(result.scores, state.outputs["pred_logits"][0, :, 0].sigmoid())
    assert result.pred_classes.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert result.image_size == (64, 96)
    metrics = held_out_patch_metrics(model, [x, patch_input(seed=5)], batch_size=2)
    assert 0 <= metrics["patch_AP"] <= metrics["patch_AP50"] <= 100 and 0 < metrics["feature_loss"] <= 4


@pytest.mark.parametrize("key,match", [("MODEL.DEFORMABLE_DETR.TWO_STAGE", "two-stage"),
                                       ("MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES", "point queries")])
def test_queries_without_learned_positions_are_refused(key, match):
    with pytest.raises(ValueError, match=match):
        build_model(tiny(**{key: True}))


def test_more_patches_than_queries_is_a_config_error():
    with pytest.raises(ValueError, match="NUM_PATCHES=9 .*NUM_OBJECT_QUERIES=8"):
        run_config_checks(tiny(**{"INPUT.QUERY_PATCH.NUM_PATCHES": 9, "INPUT.DATASET_MAPPER": "OneShotDatasetMapper"}))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A saved tiny pretraining whose every weight moved away from its initialisation."""
    torch.manual_seed(0)
    model = build_model(tiny())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    folder = tmp_path_factory.mktemp("pretrained")
    DetectionCheckpointer(model, save_dir=str(folder)).save("pretrained")
    return model.state_dict(), str(folder / "pretrained.pth")


def _finetune(path, skip):
    cfg = tiny("DeformableDetr", **{"MODEL.DETR.NUM_CLASSES": 4})
    cfg.MODEL.WEIGHTS_SKIP = skip
    torch.manual_seed(1)
    model = build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    DetrCheckpointer.from_config(cfg, model).resume_or_load(path, resume=False)
    return model, fresh


def test_encoder_only_handoff_loads_backbone_projections_and_encoder(pretrained):
    source, path = pretrained
    model, fresh = _finetune(path, list(DEFORMABLE_ENCODER_HANDOFF_SKIP))
    loaded = {k for k, v in model.state_dict().items() if not torch.equal(v, fresh[k])}
    for key in loaded:
        assert torch.equal(model.state_dict()[key], source[key]), key
    assert loaded == {k for k in model.state_dict()
                      if k.startswith(("backbone.", "input_proj.", "transformer.encoder.", "transformer.level_embed"))
                      and not k.endswith("num_batches_tracked")}
    assert any(k.startswith("query_generator.reference_points.") for k in fresh)
    assert set(source) - set(model.state_dict()) == {k for k in source if k.startswith(PRETRAINING_ONLY)}


def test_full_handoff_loads_everything_but_the_pretext_parts(pretrained):
    source, path = pretrained
    model, fresh = _finetune(path, [])
    for key, value in model.state_dict().items():
        expected = fresh[key] if key.startswith("heads.class_embed.") else source[key]
        assert torch.equal(value, expected), key
    # straight through load_state_dict: the hand-off rule drops exactly the pretext's keys
    result = build_model(tiny("DeformableDetr", **{"MODEL.DETR.NUM_CLASSES": 4})).load_state_dict(
        {k: v for k, v in source.items() if not k.startswith("heads.class_embed.")}, strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == {k for k in model.state_dict() if k.startswith("heads.class_embed.")}


def test_each_handoff_list_names_only_its_model():
    """MODEL.WEIGHTS_SKIP refuses a prefix that names nothing: DETR has no reference points."""
    deformable = build_model(tiny("DeformableDetr"))
    assert check_skip_prefixes(DEFORMABLE_ENCODER_HANDOFF_SKIP, deformable) == DEFORMABLE_ENCODER_HANDOFF_SKIP
    detr = build_model(load_yaml(os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml")))
    check_skip_prefixes(ENCODER_HANDOFF_SKIP, detr)
    with pytest.raises(ValueError, match="reference_points"):
        check_skip_prefixes(DEFORMABLE_ENCODER_HANDOFF_SKIP, detr)


def test_demo_configs_load_and_build():
    pretrain = load_yaml(DEMO_PRETRAIN)
    run_config_checks(pretrain)
    model = build_model(pretrain)
    assert isinstance(model, DeformableUpDetr) and model.freeze_backbone
    assert pretrain.MODEL.EFFICIENTNET.FREEZE_AT == 5
    assert model.query_generator.num_queries == 30 and model.query_generator.num_patches == 5
    assert model.query_generator.patch2query.in_features == 1280  # res5 with the head conv
    assert all(not p.requires_grad for p in model.backbone.parameters())

    finetune = load_yaml(DEMO_FINETUNE)
    run_config_checks(finetune)
    assert tuple(finetune.MODEL.WEIGHTS_SKIP) == DEFORMABLE_ENCODER_HANDOFF_SKIP
    detector = build_model(finetune)
    assert type(detector) is DeformableDetr
    check_skip_prefixes(finetune.MODEL.WEIGHTS_SKIP, detector)
    # the fine-tuned model takes every tensor the pretraining shares with it, shapes included
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, value in detector.state_dict().items():
        if not key.startswith("heads.class_embed."):
            assert shapes[key] == tuple(value.shape), key


def test_r50_pretraining_config_loads():
    cfg = load_yaml(os.path.join(UPDETR_CONFIGS, "updetr_deformable_r50_pretrain.yaml"))
    run_config_checks(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == "DeformableUpDetr" and cfg.MODEL.UPDETR.FREEZE_BACKBONE
    assert cfg.MODEL.DETR.NUM_OBJECT_QUERIES == 300 and cfg.INPUT.QUERY_PATCH.NUM_PATCHES == 10
    assert cfg.MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE and not cfg.MODEL.DEFORMABLE_DETR.TWO_STAGE
    assert cfg.INPUT.DATASET_MAPPER == "QueryPatchDatasetMapper" and cfg.INPUT.QUERY_PATCH.SIZE == 128


def train_net(*args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def test_demo_pretrain_then_finetune_through_train_net(tmp_path):
    fast = ["SEED", "0", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "SOLVER.IMS_PER_BATCH", "2",
            "DATALOADER.NUM_WORKERS", "1", "SOLVER.MAX_ITER", "2"]
    pre = str(tmp_path / "pretrain")
    output = train_net("--config-file", DEMO_PRETRAIN, *fast, "OUTPUT_DIR", pre)
    assert "DeformableUpDetr" in output and "loss_feature" in output and "loss_focal" in output
    assert os.path.isfile(os.path.join(pre, "model_final.pth"))

    output = train_net("--config-file", DEMO_FINETUNE, *fast, "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST",
                       "192", "INPUT.CROP.SIZE", "(64, 128)", "INPUT.DETR_CROP.PRE_RESIZE", "(128,)",
                       "MODEL.WEIGHTS", os.path.join(pre, "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "finetune"))
    assert "Initialising DeformableDetr from an UP-DETR pretraining checkpoint" in output
    assert "query_generator.reference_points.* (2 tensors)" in output
    assert "copypaste: AP,AP50" in output
