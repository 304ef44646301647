"""yaml config: the core keys, ``add_updetr_config`` (every key of the project) and the
registry through which methods add theirs. A method's ``add_<method>_config`` (e.g.
``add_dn_config``, ``add_codetr_config``, ``add_updetr_pretraining_config``) is also
reachable here by name, without this package importing any method."""
from .defaults import (
    add_deformable_detr_config,
    add_detr_config,
    add_updetr_config,
    default_device,
    load_yaml_config,
)
from .lazy_overrides import UnknownConfigKeyError, apply_lazy_overrides
from .registry import register_config, register_config_check, registered_configs, run_config_checks
from . import option_checks  # noqa: E402,F401  (registers the checks of impossible options)

__all__ = [
    "UnknownConfigKeyError",
    "add_deformable_detr_config",
    "add_detr_config",
    "add_updetr_config",
    "apply_lazy_overrides",
    "default_device",
    "load_yaml_config",
    "register_config",
    "register_config_check",
    "registered_configs",
    "run_config_checks",
]


def __getattr__(name: str):
    configs = registered_configs()
    if name in configs:
        return configs[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
