"""The encoder pretexts' configs (projects/EncoderPretext/configs): every file loads and passes
the config checks, yaml and LazyConfig twins build the same model and mapper, the lazy task is
one key (plug-in and mapper follow it), the checks catch a plug-in and a mapper that disagree;
then pretraining -> fine-tuning and a lazy multi-task run through tools/train_net.py."""
import glob
import json
import os

import numpy as np
import pytest
import torch

import updetr_d2  # first: it makes Detectron2 v0.6 work here before detectron2 is used
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from omegaconf import OmegaConf

from updetr_d2.data.mappers import build_dataset_mapper
from updetr_d2.methods.pretext import EncoderPretext, KMeansPatchTokenizer, PretextDatasetMapper
from updetr_d2.methods.pretext.mapper import mim_fill_colour
from updetr_d2.methods.pretext.tokenizer import save_codebook

from test_train_net import DETR_YAML_FAST, ROOT, checkpoints, train_net

CONFIGS = os.path.join(ROOT, "projects", "EncoderPretext", "configs")
YAMLS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "*.yaml")))
LAZIES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "*.py")))
TWINS = [name[:-3] for name in LAZIES]
load_yaml_config, run_config_checks = updetr_d2.config.load_yaml_config, updetr_d2.config.run_config_checks
TASKS = ("reconstruction", "mim_continuous", "mim_discrete", "jigsaw_continuous", "jigsaw_discrete")
DEMO_PRETRAIN = "pretext_detr_R18_demo_pretrain"


def yaml_cfg(name, *opts):
    return load_yaml_config(os.path.join(CONFIGS, name), ["MODEL.DEVICE", "cpu", *opts])


def lazy_cfg(name, *overrides):
    return LazyConfig.apply_overrides(LazyConfig.load(os.path.join(CONFIGS, name)), list(overrides))


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_the_config_set_is_complete():
    assert len(TWINS) == 8 and all(t + ".yaml" in YAMLS for t in TWINS)
    effnet = {f"pretext_{m}_effnet_lite0_demo_{s}.yaml" for m in ("detr", "deformable_detr")
              for s in ("pretrain", "multitask")}
    assert set(YAMLS) == {t + ".yaml" for t in TWINS} | effnet


@pytest.mark.parametrize("name", YAMLS + LAZIES)
def test_every_config_loads_passes_the_checks_and_names_the_tasks(name):
    with open(os.path.join(CONFIGS, name)) as f:
        header = f.read().split("_BASE_")[0] if name.endswith(".yaml") else f.read().split('"""')[1]
    assert "ONE key" in header and all(task in header for task in TASKS), name
    assert "model_final.pth" in header and "twin" in header
    pretrain = name.split(".")[0].endswith("_pretrain")
    if name.endswith(".yaml"):
        cfg = yaml_cfg(name)
        run_config_checks(cfg)
        p = cfg.MODEL.PRETEXT
        assert cfg.MODEL.DETR.PLUGINS == ["EncoderPretext"] and cfg.INPUT.DATASET_MAPPER == "PretextDatasetMapper"
        assert p.TASK == "mim_continuous" and p.LEVELS == [0] and p.RATIO == 0.5 and p.LOSS_ON_TRANSFORMED
        deformable = cfg.MODEL.META_ARCHITECTURE == "DeformableDetr"
        assert p.PATCH_SIZE == (8 if deformable else 32)
        assert cfg.MODEL.DETR.ENCODER_ONLY == pretrain
        if pretrain:
            assert cfg.DATASETS.TEST == () and not cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS and p.HEAD == "linear"
            assert cfg.DATASETS.TRAIN == (("updetr_demo_unlabeled",) if "demo" in name else ("imagenet_unlabeled",))
        else:
            assert p.HEAD == "mlp_deconv" and p.WEIGHT == (0.1 if deformable else 1.0)
    else:
        cfg = lazy_cfg(name)
        run_config_checks(cfg)
        plugin = cfg.model.plugins[0]
        assert plugin.task == "mim_continuous" and cfg.dataloader.train.mapper.task == "mim_continuous"
        assert cfg.model.encoder_only == pretrain and ("evaluator" not in cfg.dataloader) == pretrain


@pytest.mark.parametrize("twin", TWINS)
def test_yaml_and_lazy_twins_build_the_same_model_and_mapper(twin):
    cfg = yaml_cfg(twin + ".yaml")
    lazy = lazy_cfg(twin + ".py")
    from_yaml, from_lazy = build_model(cfg), instantiate(lazy.model)
    assert shapes(from_yaml) == shapes(from_lazy)
    assert from_yaml.encoder_only == from_lazy.encoder_only == twin.endswith("_pretrain")
    a, b = from_yaml.plugins[0], from_lazy.plugins[0]
    assert isinstance(b, EncoderPretext) and type(a.heads[0]) is type(b.heads[0])
    for attr in ("task", "levels", "strides", "patch_size", "weight", "loss_on_transformed", "compat_jigsaw_mask_bug"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert a.tokenizer is None and b.tokenizer is None
    # The same schedule and optimiser.
    s, opt = cfg.SOLVER, lazy.optimizer
    assert (s.BASE_LR, s.WEIGHT_DECAY, s.BACKBONE_MULTIPLIER) == (opt.lr, opt.weight_decay,
                                                                  opt.params.backbone_multiplier)
    assert (s.MAX_ITER, s.CHECKPOINT_PERIOD, s.IMS_PER_BATCH) == (
        lazy.train.max_iter, lazy.train.checkpointer.period, lazy.dataloader.train.total_batch_size)
    if "deformable" in twin:
        assert s.OFFSET_LR_MULTIPLIER == opt.params.offset_multiplier
    if "demo" in twin:  # the R50 placeholder datasets are not registered
        m_yaml = build_dataset_mapper(cfg, is_train=True)
        m_lazy = instantiate(lazy.dataloader.train.mapper)
        assert isinstance(m_lazy, PretextDatasetMapper) and type(m_lazy.base_mapper) is type(m_yaml.base_mapper)
        for attr in ("task", "kind", "ratio", "patch_size", "fill", "seed"):
            assert getattr(m_yaml, attr) == getattr(m_lazy, attr), attr
        assert lazy.dataloader.train.dataset.names == cfg.DATASETS.TRAIN[0]


@pytest.mark.parametrize("name", [n for n in YAMLS if "effnet" in n])
def test_efficientnet_variants_read_the_right_level(name):
    model = build_model(yaml_cfg(name))
    plugin = model.plugins[0]
    assert plugin.strides == [plugin.patch_size] and model.memory_strides[0] == plugin.patch_size
    assert model.pixel_mean.flatten().tolist() == [127.0, 127.0, 127.0]


def test_lazy_task_is_one_key_for_plugin_and_mapper():
    cfg = lazy_cfg(DEMO_PRETRAIN + ".py", "model.plugins.0.task=jigsaw_discrete", "model.plugins.0.patch_size=64")
    mapper = cfg.dataloader.train.mapper
    # The mapper holds interpolations, not copies of the values.
    raw = OmegaConf.to_container(mapper, resolve=False)
    assert raw["task"] == "${model.plugins.0.task}" and raw["patch_size"] == "${model.plugins.0.patch_size}"
    run_config_checks(cfg)
    built = instantiate(mapper)
    assert (built.task, built.kind, built.patch_size) == ("jigsaw_discrete", "jigsaw", 64)
    plugin = instantiate(cfg.model).plugins[0]
    assert (plugin.task, plugin.target, plugin.patch_size) == ("jigsaw_discrete", "positions", 64)


def test_lazy_discrete_mim_takes_the_task_and_a_codebook(tmp_path):
    cfg = lazy_cfg(DEMO_PRETRAIN + ".py", "model.plugins.0.task=mim_discrete")
    with pytest.raises(ValueError, match=r"model\.plugins\.0\.tokenizer\.codebook_path"):
        run_config_checks(cfg)
    path = str(tmp_path / "codebook.npz")
    centroids = np.random.default_rng(0).normal(size=(8, 3 * 4 * 4)).astype(np.float32)
    save_codebook(path, centroids, 32, 4, cfg.model.pixel_mean, cfg.model.pixel_std)
    LazyConfig.apply_overrides(cfg, [f"model.plugins.0.tokenizer.codebook_path={path}"])
    run_config_checks(cfg)
    plugin = instantiate(cfg.model).plugins[0]
    assert isinstance(plugin.tokenizer, KMeansPatchTokenizer) and plugin.tokenizer.num_codes == 8
    assert instantiate(cfg.dataloader.train.mapper).kind == "mim"


def test_lazy_fill_follows_the_model_and_its_mode():
    cfg = lazy_cfg(DEMO_PRETRAIN + ".py", "model.pixel_mean=[10.0,20.0,30.0]")
    assert instantiate(cfg.dataloader.train.mapper).fill == (10.0, 20.0, 30.0)
    LazyConfig.apply_overrides(cfg, ["dataloader.train.mapper.fill.mode=imagenet_constants"])
    expected = mim_fill_colour("imagenet_constants", [10.0, 20.0, 30.0], cfg.model.pixel_std, "RGB")
    assert instantiate(cfg.dataloader.train.mapper).fill == pytest.approx(expected)


@pytest.mark.parametrize("override,keys", [
    ("dataloader.train.mapper.task=jigsaw_continuous", r"dataloader\.train\.mapper\.task.*model\.plugins\.0\.task"),
    ("dataloader.train.mapper.patch_size=16",
     r"dataloader\.train\.mapper\.patch_size.*model\.plugins\.0\.patch_size"),
])
def test_lazy_check_catches_a_mapper_that_disagrees(tmp_path, override, keys):
    cfg = lazy_cfg(DEMO_PRETRAIN + ".py", override)
    with pytest.raises(ValueError, match=keys):
        run_config_checks(cfg)
    # Also once saved and reloaded, when every _target_ is a dotted path.
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, path)
    with pytest.raises(ValueError, match=keys):
        run_config_checks(LazyConfig.load(path))


def test_lazy_check_names_an_interpolation_that_does_not_resolve():
    cfg = lazy_cfg(DEMO_PRETRAIN + ".py", "dataloader.train.mapper.task=${model.plugins.1.task}")
    with pytest.raises(ValueError, match=r"dataloader\.train\.mapper\.task cannot be resolved"):
        run_config_checks(cfg)


def test_lazy_check_plugin_and_mapper_come_together():
    cfg = lazy_cfg(DEMO_PRETRAIN + ".py")
    cfg.dataloader.train.mapper = cfg.dataloader.train.mapper.base_mapper
    with pytest.raises(ValueError, match=r"model\.plugins\.0.*dataloader\.train\.mapper"):
        run_config_checks(cfg)
    cfg = lazy_cfg(DEMO_PRETRAIN + ".py", "model.encoder_only=False")
    cfg.model.plugins = []
    with pytest.raises(ValueError, match=r"dataloader\.train\.mapper.*model\.plugins"):
        run_config_checks(cfg)
    cfg.model.encoder_only = True
    with pytest.raises(ValueError, match=r"model\.encoder_only.*model\.plugins"):
        run_config_checks(cfg)


def test_yaml_check_plugin_without_mapper_names_both_keys():
    with pytest.raises(ValueError, match=r"MODEL\.DETR\.PLUGINS.*INPUT\.DATASET_MAPPER"):
        run_config_checks(yaml_cfg(DEMO_PRETRAIN + ".yaml", "INPUT.DATASET_MAPPER", "DetrDatasetMapper"))


# Tiny and quick: 2 images a batch at a 128-px short side, no workers, no evaluation.
FAST = [*DETR_YAML_FAST, "DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "1000"]


def test_pretrain_then_fine_tune_through_train_net(tmp_path):
    pre = str(tmp_path / "pretrain")
    output = train_net("--config-file", os.path.join(CONFIGS, DEMO_PRETRAIN + ".yaml"), *FAST,
                       "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", pre)
    # (Detectron2 logs a single loss as total_loss only)
    assert "EncoderPretext" in output and "total_loss" in output and "model_final.pth" in checkpoints(pre)
    keys = torch.load(os.path.join(pre, "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    assert any(k.startswith("transformer.encoder.") for k in keys)
    assert not any(k.startswith(("transformer.decoder.", "query_generator.")) for k in keys)

    output = train_net("--config-file", os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml"), *FAST,
                       "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()", "MODEL.WEIGHTS",
                       os.path.join(pre, "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "finetune"))
    assert "encoder-only pretraining checkpoint" in output and "loss_giou" in output


def test_lazy_multitask_run_logs_the_pretext_loss(tmp_path):
    out = str(tmp_path / "multitask")
    aug = "dataloader.train.mapper.base_mapper.augmentations"
    train_net("--config-file", os.path.join(CONFIGS, "pretext_detr_R18_demo_multitask.py"),
              f"{aug}.min_sizes=[128]", f"{aug}.max_size=192", f"{aug}.crop_pre_resize=[128]",
              f"{aug}.crop_size=[64,128]", "dataloader.test.mapper.augmentations.0.short_edge_length=128",
              "dataloader.test.mapper.augmentations.0.max_size=192", "dataloader.train.total_batch_size=2",
              "dataloader.train.num_workers=0", "dataloader.test.num_workers=0", "train.max_iter=2",
              "train.checkpointer.period=1000", "train.seed=0", f"train.output_dir={out}")
    with open(os.path.join(out, "metrics.json")) as f:
        logged = [json.loads(line) for line in f]
    assert any("loss_mim_continuous" in r and "loss_giou" in r for r in logged)
