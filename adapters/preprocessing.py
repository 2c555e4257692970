"""MAIRA-2's image preprocessing, reproduced without the remote code.

The recipe (microsoft/maira-2 ``processing_maira2.py``, ``Maira2Processor._normalize_image``, followed
by the checkpoint's ``BitImageProcessor`` — the RAD-DINO image processor):

1. greyscale (PIL ``convert("L")``: luma ``0.299 R + 0.587 G + 0.114 B``),
2. per-image min-max rescale to ``[0, 255]`` and truncation to ``uint8``,
3. back to 3 identical channels, resize so the *shortest* edge is ``image_size`` (bicubic; the long
   edge becomes ``int(image_size * long / short)``), centre crop ``image_size × image_size``,
4. ``x / 255``, then ``(x - mean) / std`` with mean 0.5307, std 0.2583 (RAD-DINO's statistics).

For ``uint8`` (and PIL ``L``/``RGB``) inputs this is bit-for-bit MAIRA-2's pipeline (checked against
transformers' ``BitImageProcessorPil`` in ``tests/test_prompts.py``). Higher bit-depth and float arrays
are min-max rescaled from their full-precision values (MAIRA-2's ``convert("L")`` would clip a 16-bit
image at 255 first — almost certainly not what a caller of this function wants). A constant image (max ==
min) becomes all zeros instead of MAIRA-2's division by zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

MAIRA2_IMAGE_MEAN = 0.5307
MAIRA2_IMAGE_STD = 0.2583
_LUMA = np.array([0.299, 0.587, 0.114])


def to_greyscale_uint8(image: Any) -> np.ndarray:
    """Steps 1–2: any supported image → ``uint8`` ``[H, W]`` min-max rescaled to ``[0, 255]``.

    Accepts a PIL image, a numpy array or a torch tensor, ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or
    ``[H, W, 4]`` (alpha ignored), of any integer or float dtype.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("L", "RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
            arr = np.asarray(image.convert("L"))  # exactly MAIRA-2's first step
        else:  # "I;16", "I", "F": keep full precision
            arr = np.asarray(image).astype(np.float64)
    elif isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise TypeError(
            f"an image must be a numpy array, a torch tensor or a PIL image; got {type(image).__name__}"
        )
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        elif arr.dtype == np.uint8:  # PIL's integer luma, as MAIRA-2's convert("L") computes it
            arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., :3])).convert("L"))
        else:
            arr = arr[..., :3].astype(np.float64) @ _LUMA
    if arr.ndim != 2:
        raise ValueError(
            f"an image must be [H, W] (greyscale) or [H, W, C] with C in (1, 3, 4); got shape "
            f"{tuple(arr.shape)}. Channel-first arrays ([C, H, W]) must be transposed first."
        )
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"an image must be at least 2×2 pixels; got {tuple(arr.shape)}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"image pixels must be numeric; got dtype {arr.dtype}")
    x = arr.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("image contains NaN or infinite pixels")
    x -= x.min()
    hi = x.max()
    if hi > 0:
        x /= hi
    return (x * 255).astype(np.uint8)  # truncation, as MAIRA-2 does


def preprocess_image(
    image: Any,
    image_size: int = 518,
    mean: float | tuple[float, float, float] = MAIRA2_IMAGE_MEAN,
    std: float | tuple[float, float, float] = MAIRA2_IMAGE_STD,
) -> torch.Tensor:
    """One image → model pixels ``float32 [3, image_size, image_size]`` (MAIRA-2's recipe, see module)."""
    grey = Image.fromarray(to_greyscale_uint8(image), mode="L")
    w, h = grey.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(image_size * long / short)
    new_w, new_h = (image_size, new_long) if w <= h else (new_long, image_size)
    if (new_w, new_h) != (w, h):
        grey = grey.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    arr = np.asarray(grey)[top : top + image_size, left : left + image_size]
    x = torch.from_numpy(arr.astype(np.float32) * np.float32(1 / 255))
    m = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1).expand(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1).expand(3, 1, 1)
    return (x.unsqueeze(0).expand(3, -1, -1) - m) / s


def image_hw(image: Any) -> tuple[int, int]:
    """``(height, width)`` of an image in any accepted form (for box re-mapping)."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    return int(image.shape[0]), int(image.shape[1])
