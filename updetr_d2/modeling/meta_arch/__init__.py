from .detr import Detr

__all__ = ["Detr"]
