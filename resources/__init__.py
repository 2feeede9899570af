"""Dagster resources of the pipeline: image source, compute device, storage, settings."""

from resources.compute_device import ComputeDevice
from resources.image_source import ImageSource
from resources.settings import DedupSettings
from resources.storage import DedupStorage

__all__ = ["ComputeDevice", "DedupSettings", "DedupStorage", "ImageSource"]
