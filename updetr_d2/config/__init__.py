from .defaults import add_updetr_config, default_device

__all__ = ["add_updetr_config", "default_device"]
