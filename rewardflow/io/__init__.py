"""Reading and writing media files (images as ``[3, H, W]`` float tensors in [0, 1])."""

from rewardflow.io.images import (IMAGE_EXTENSIONS, ImageReadError, list_images, load_image, save_image,
                                  to_pil, to_uint8)

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "list_images", "load_image", "save_image", "to_pil", "to_uint8"]
