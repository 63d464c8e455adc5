"""Data: built-in sets (builtin.py) and how they are split (splits.py), image-folder trees (images.py), .beton
writing (beton.py), and the three loaders (memory.py, ffcv_loader.py, torchvision_loader.py), each a BatchLoader
(base.py), chosen by build_loaders (loaders.py)."""
from recondec.data.base import BatchLoader, Loaders, ten_crop_view_size
from recondec.data.loaders import build_loaders

__all__ = ["BatchLoader", "Loaders", "build_loaders", "ten_crop_view_size"]
