from .evaluation import build_evaluator
from .launch import main, setup
from .trainer import Trainer

__all__ = ["Trainer", "build_evaluator", "main", "setup"]
