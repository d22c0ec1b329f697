"""Reading and writing media files (images as ``[3, H, W]`` float tensors in [0, 1]), prompt files, manifests and
progress bars. The image helpers are re-exported lazily: the command-line parser imports ``rewardflow.io.progress``
and must not load torch before :mod:`rewardflow.runtime` has chosen the CPU threading."""

import importlib

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "list_images", "load_image", "save_image", "to_pil", "to_uint8"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module("rewardflow.io.images"), name)
    raise AttributeError(f"module 'rewardflow.io' has no attribute {name!r}")
