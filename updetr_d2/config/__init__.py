from .defaults import (
    add_deformable_detr_config,
    add_detr_config,
    add_dn_config,
    add_updetr_config,
    add_updetr_pretraining_config,
    default_device,
    load_yaml_config,
)

__all__ = [
    "add_deformable_detr_config",
    "add_detr_config",
    "add_dn_config",
    "add_updetr_config",
    "add_updetr_pretraining_config",
    "default_device",
    "load_yaml_config",
]
