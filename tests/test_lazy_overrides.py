"""LazyConfig overrides refuse keys the config does not have (a typo would otherwise
create a new key and the run go on with the default), suggesting the closest ones; a
``+`` prefix adds a key on purpose."""
import pytest

import updetr_d2  # noqa: F401
from detectron2.config import LazyConfig
from updetr_d2.config import UnknownConfigKeyError, apply_lazy_overrides

CONFIG = "configs/demo/detr_R18_demo.py"


@pytest.fixture
def cfg():
    return LazyConfig.load(CONFIG)


def test_an_existing_key_is_overridden(cfg):
    assert cfg.train.max_iter != 3
    apply_lazy_overrides(cfg, ["train.max_iter=3", "model.transformer.num_encoder_layers=1"])
    assert cfg.train.max_iter == 3 and cfg.model.transformer.num_encoder_layers == 1


def test_a_typo_is_an_error_naming_the_key_and_the_closest_one(cfg):
    with pytest.raises(KeyError) as error:
        apply_lazy_overrides(cfg, ["train.max_itr=3"])
    message = str(error.value)
    assert "'train.max_itr'" in message and "Did you mean 'train.max_iter'" in message
    assert "max_itr" not in cfg.train


def test_a_nested_typo_is_an_error(cfg):
    with pytest.raises(UnknownConfigKeyError, match=r"'model\.transformr\.d_model'.*'model\.transformer'"):
        apply_lazy_overrides(cfg, ["model.transformr.d_model=64"])
    nested = r"'model\.transformer\.num_encodr_layers'.*'model\.transformer\.num_encoder_layers'"
    with pytest.raises(UnknownConfigKeyError, match=nested):
        apply_lazy_overrides(cfg, ["model.transformer.num_encodr_layers=1"])


def test_nothing_is_applied_when_one_override_is_wrong(cfg):
    before = cfg.train.max_iter
    with pytest.raises(UnknownConfigKeyError):
        apply_lazy_overrides(cfg, ["train.max_iter=3", "train.max_itr=3"])
    assert cfg.train.max_iter == before


def test_a_key_in_the_wrong_place_is_suggested_where_it_is(cfg):
    with pytest.raises(UnknownConfigKeyError, match=r"Did you mean 'train\.max_iter'"):
        apply_lazy_overrides(cfg, ["max_iter=3"])


def test_a_key_under_a_value_is_an_error(cfg):
    with pytest.raises(UnknownConfigKeyError, match=r"'train\.max_iter' is .* not a config"):
        apply_lazy_overrides(cfg, ["train.max_iter.x=3"])


def test_list_items_are_found_by_index(cfg):
    apply_lazy_overrides(cfg, ["dataloader.test.mapper.augmentations.0.max_size=999"])
    assert cfg.dataloader.test.mapper.augmentations[0].max_size == 999
    with pytest.raises(UnknownConfigKeyError, match=r"'dataloader\.test\.mapper\.augmentations' is a list"):
        apply_lazy_overrides(cfg, ["dataloader.test.mapper.augmentations.5.max_size=1"])


def test_a_plus_adds_a_key_on_purpose(cfg):
    apply_lazy_overrides(cfg, ["+train.new_key=1", "++train.other_key=2", "++train.max_iter=4"])
    assert cfg.train.new_key == 1 and cfg.train.other_key == 2 and cfg.train.max_iter == 4
    # As in hydra, '+' is for new keys only: it does not silently override.
    with pytest.raises(UnknownConfigKeyError, match=r"already has 'train\.max_iter'"):
        apply_lazy_overrides(cfg, ["+train.max_iter=5"])
