"""The encoder pretexts on the model side: the loss mask, gradients only from the scored
tokens, the Deformable level slice, encoder-only pretraining and its hand-off to a
detector, every task end to end, and multi-task at weight 0 equal to the plain detector."""
import copy
import os

import numpy as np
import pytest
import torch

import updetr_d2  # noqa: F401
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from updetr_d2 import add_updetr_config
from updetr_d2.checkpoint import DetrCheckpointer
from updetr_d2.methods.pretext import EncoderPretext, corrupt, crop_to_patches, loss_mask
from updetr_d2.solver import build_optimizer

from helpers import fake_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(arch="detr", task="mim_continuous", plugin=True, encoder_only=False, **pretext):
    cfg = get_cfg()
    add_updetr_config(cfg)
    if arch == "detr":
        cfg.merge_from_file(os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml"))
    else:
        cfg.merge_from_file(os.path.join(ROOT, "projects", "DeformableDETR", "configs", "deformable_detr_R18_demo.yaml"))
        cfg.MODEL.PRETEXT.PATCH_SIZE = 8
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD = 32, 4, 64
    d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_OBJECT_QUERIES, d.DROPOUT = 1, 1, 10, 0.1
    d.ENCODER_ONLY = encoder_only
    if plugin:
        d.PLUGINS = ["EncoderPretext"]
        cfg.INPUT.DATASET_MAPPER = "PretextDatasetMapper"
    cfg.MODEL.PRETEXT.TASK = task
    for key, value in pretext.items():
        cfg.MODEL.PRETEXT[key.upper()] = value
    cfg.MODEL.DEVICE = "cpu"
    cfg.SEED = 7
    return cfg


def with_view(x, kind="mim", ratio=0.5, patch=32, seed=0):
    """``x`` with the corrupted view PretextDatasetMapper would add (mean fill)."""
    image = crop_to_patches(x["image"].float(), patch)
    view = corrupt(image, kind, ratio, patch, [103.53, 116.28, 123.675], np.random.default_rng(seed))
    return dict(x, pretext={"image": view.image, "source": view.source, "transformed": view.transformed})


def batch(kind="mim", patch=32, ratio=0.5):
    xs = [fake_input(128, 192, [[10, 10, 90, 100]], [1], seed=1),
          fake_input(160, 100, [[5, 5, 60, 70], [40, 40, 90, 150]], [0, 2], seed=2)]  # not multiples of 32
    return [with_view(x, kind, ratio, patch, seed=i) for i, x in enumerate(xs)]


# ----------------------------------------------------------------------------- loss mask
def test_loss_mask_rules():
    source = torch.tensor([[0, 3], [2, 1]])  # 1 and 3 swapped, 0 and 2 fixed
    moved = source != torch.arange(4).view(2, 2)
    assert torch.equal(loss_mask("jigsaw", source, moved, True), moved)
    assert torch.equal(loss_mask("jigsaw", source, moved, True, compat_jigsaw_mask_bug=True), ~moved)
    assert loss_mask("jigsaw", source, moved, False).all()
    assert loss_mask("none", source, torch.zeros(2, 2, dtype=torch.bool), True).all()  # reconstruction: all


# ----------------------------------------------------------------------------- gradients
class _Model:  # what the loss reads of a detector: the normalisation
    pixel_mean = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    pixel_std = torch.tensor([57.375, 57.12, 58.395]).view(3, 1, 1)


@pytest.mark.parametrize("task,head", [("mim_continuous", "linear"), ("mim_continuous", "mlp_deconv"),
                                       ("jigsaw_discrete", "linear"), ("jigsaw_continuous", "mlp_deconv")])
def test_only_scored_tokens_send_gradients(task, head):
    plugin = EncoderPretext(task=task, hidden_dim=16, strides=[32], head=head)
    kind = task.split("_")[0]
    inputs = batch(kind)
    # A padded batch memory map: image 0 has 4x6 tokens, image 1 5x3; the map is 5x6.
    level = torch.randn(2, 16, 5, 6, requires_grad=True)
    loss = plugin.pretext_loss(_Model(), inputs, [plugin.heads[0](level)], [(5, 6)])
    loss.backward()
    touched = level.grad.abs().sum(1) > 0  # [2, 5, 6]
    for b, x in enumerate(inputs):
        hp, wp = x["pretext"]["source"].shape
        expected = torch.zeros(5, 6, dtype=torch.bool)
        expected[:hp, :wp] = x["pretext"]["transformed"]
        assert torch.equal(touched[b], expected), (task, b)


# ----------------------------------------------------------------------------- deformable levels
def test_deformable_level_slice_is_that_levels_tokens():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("deformable", levels=[0, 1], patch_size=16))
    model.eval()
    state = model.encode_images([x["image"] for x in batch(patch=8)])
    memory = state.memory
    h0, w0 = memory.spatial_shapes[0].tolist()
    assert torch.equal(memory.level_maps()[0].flatten(2).transpose(1, 2), memory.memory[:, : h0 * w0])
    assert model.memory_strides == [8, 16, 32]
    assert memory.level_maps()[1].shape[-2:] == (h0 // 2, w0 // 2)


@pytest.mark.parametrize("arch,levels,patch", [("detr", [0], 32), ("deformable", [0], 8), ("deformable", [0, 1, 2], 32)])
@pytest.mark.parametrize("task", ["reconstruction", "mim_continuous", "jigsaw_continuous", "jigsaw_discrete"])
def test_every_task_trains_on_each_detector(arch, levels, patch, task):
    torch.manual_seed(0)
    cfg = tiny_cfg(arch, task, levels=levels, patch_size=patch, head="mlp_deconv" if arch == "deformable" else "linear")
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(batch(task.split("_")[0] if task != "reconstruction" else "none", patch))
    assert f"loss_{task}" in losses and torch.isfinite(losses[f"loss_{task}"])
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.plugins[0].parameters())


# ----------------------------------------------------------------------------- multi-task, weight 0
def _train(cfg, batches):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    history = []
    with EventStorage(0) as storage:
        for inputs in batches:
            losses = model(copy.deepcopy(inputs))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            history.append({k: v.item() for k, v in losses.items()})
            storage.step()
    return model, history


@pytest.mark.parametrize("arch", ["detr", "deformable"])
def test_multi_task_at_weight_zero_is_the_plain_detector(arch):
    patch = 32 if arch == "detr" else 8
    batches = [batch("mim", patch), batch("mim", patch, ratio=0.3), batch("mim", patch)]
    plain, plain_losses = _train(tiny_cfg(arch, plugin=False), batches)
    multi, multi_losses = _train(tiny_cfg(arch, weight=0.0), batches)
    for a, b in zip(plain_losses, multi_losses):
        assert b.pop("loss_mim_continuous") == 0.0
        assert a == b  # exactly: same draws, same arithmetic
    multi_state = multi.state_dict()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, multi_state[key]), key
    assert not any(p.requires_grad for p in multi.plugins[0].parameters())  # measured, not trained
    # ... while a non-zero weight does change the detector.
    trained, _ = _train(tiny_cfg(arch, weight=1.0), batches[:1])
    assert not torch.equal(trained.backbone.backbone.stem.conv1.weight, _train(tiny_cfg(arch, plugin=False),
                                                                             batches[:1])[0].backbone.backbone.stem.conv1.weight)


# ----------------------------------------------------------------------------- pretraining + hand-off
def test_encoder_pretraining_learns_and_hands_off_backbone_projection_encoder(tmp_path, caplog):
    from detectron2.data import DatasetCatalog
    from updetr_d2.methods.pretext import PretextDatasetMapper

    cfg = tiny_cfg("detr", "mim_continuous", encoder_only=True)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.CROP.ENABLED = (160,), 224, False
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 160, 224
    cfg.SOLVER.BASE_LR = 2e-3
    records = DatasetCatalog.get("updetr_demo_unlabeled")
    train_mapper, test_mapper = PretextDatasetMapper(cfg, True), PretextDatasetMapper(cfg, False, seed=0)
    held_out = [test_mapper(r) for r in records[-4:]]

    torch.manual_seed(0)
    model = build_model(cfg)
    assert not any(k.startswith(("transformer.decoder", "heads", "query_generator")) for k in model.state_dict())
    optimizer = build_optimizer(cfg, model)
    plugin = model.plugins[0]
    model.eval()
    before = plugin.held_out_loss(model, held_out)
    model.train()
    with EventStorage(0) as storage:
        for it in range(30):
            inputs = [train_mapper(records[(2 * it + k) % 16]) for k in range(2)]
            loss = model(inputs)["loss_mim_continuous"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            storage.step()
    model.eval()
    after = plugin.held_out_loss(model, held_out)
    assert after < 0.8 * before, (before, after)
    with pytest.raises(RuntimeError, match="encoder-only"):
        model(held_out)

    path = str(tmp_path / "pretrained.pth")
    torch.save({"model": model.state_dict()}, path)
    torch.manual_seed(1)
    detector = build_model(tiny_cfg("detr", plugin=False))
    fresh = {k: v.clone() for k, v in detector.state_dict().items()}
    with caplog.at_level("INFO"):
        DetrCheckpointer(detector).load(path)
    pretrained, loaded = model.state_dict(), detector.state_dict()
    for key, value in loaded.items():
        if key.startswith(("backbone.", "input_proj.", "transformer.encoder.")):
            assert torch.equal(value, pretrained[key]), key
        else:
            assert torch.equal(value, fresh[key]), key  # decoder, queries, heads: fresh
    assert "encoder-only pretraining checkpoint" in caplog.text and "plugins.0" in caplog.text


# ----------------------------------------------------------------------------- discrete MIM, UP-DETR
def test_discrete_mim_trains_with_a_project_built_codebook(tmp_path):
    from updetr_d2.methods.pretext.tokenizer import save_codebook

    cfg = tiny_cfg("detr", "mim_discrete", codebook=str(tmp_path / "codebook.npz"))
    centroids = np.random.default_rng(0).normal(size=(8, 3 * 4 * 4)).astype(np.float32)
    save_codebook(cfg.MODEL.PRETEXT.CODEBOOK, centroids, 32, 4, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.plugins[0].heads[0].proj.out_features == 8
    assert not any(".tokenizer." in k for k in model.state_dict())  # the codebook stays a file
    model.train()
    with EventStorage(0):
        losses = model(batch("mim"))
    assert 0 < losses["loss_mim_discrete"].item() < 10


def test_updetr_pretraining_with_a_pretext_in_one_run():
    from detectron2.data import DatasetCatalog
    from updetr_d2.methods.pretext import PretextDatasetMapper

    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "projects", "UPDETR", "configs", "updetr_R18_demo_pretrain.yaml"))
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD, d.ENC_LAYERS, d.DEC_LAYERS = 32, 4, 64, 1, 1
    d.PLUGINS = ["EncoderPretext"]
    cfg.INPUT.DATASET_MAPPER, cfg.MODEL.PRETEXT.BASE_MAPPER = "PretextDatasetMapper", "QueryPatchDatasetMapper"
    cfg.MODEL.PRETEXT.TASK = "jigsaw_continuous"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (160,), 224
    cfg.MODEL.DEVICE = "cpu"
    mapper = PretextDatasetMapper(cfg, True)
    inputs = [mapper(r) for r in DatasetCatalog.get("updetr_demo_unlabeled")[:2]]
    assert all("patches" in x and "pretext" in x for x in inputs)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(inputs)
    assert {"loss_ce", "loss_bbox", "loss_feature", "loss_jigsaw_continuous"} <= set(losses)
    sum(losses.values()).backward()
    assert model.transformer.encoder.layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0
