from .defaults import add_detr_config, add_updetr_config, default_device

__all__ = ["add_detr_config", "add_updetr_config", "default_device"]
