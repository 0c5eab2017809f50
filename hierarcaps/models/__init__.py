"""The Encoder protocol and its adapters; heavy stacks load only when a model is created."""

from .base import Encoder
from .registry import load_encoder

__all__ = ["Encoder", "load_encoder"]
