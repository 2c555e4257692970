"""Image files and image-like values (JPEG/PNG/DICOM paths, bytes, PIL images, arrays) → greyscale arrays."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sae_rad_ext.data.dicom import is_dicom, read_dicom
from sae_rad_ext.data.read_stats import StudyReadError

ImageDType = Literal["uint8", "float32"]


def _check_dtype(dtype: str) -> None:
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")


def _from_pil(im, max_side: int | None, dtype: ImageDType) -> np.ndarray:
    if max_side is not None and im.format == "JPEG":
        im.draft("L", (max_side, max_side))  # JPEG DCT-domain downscale (less memory; entropy decoding still dominates)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if max_side is not None and max(arr.shape) > max_side:
            arr = _resize(arr, max_side)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return np.round(arr * 255).astype(np.uint8) if dtype == "uint8" else arr.astype(np.float32)
    im.load()
    im = im.convert("L")
    if max_side is not None and max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    arr = np.asarray(im, dtype=np.uint8).copy()
    return arr if dtype == "uint8" else (arr.astype(np.float32) / 255.0)


def _resize(arr: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = arr.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize(size, Image.BILINEAR), dtype=np.float64)


def load_image(path: str | Path, *, max_side: int | None = None, dtype: ImageDType = "uint8") -> np.ndarray:
    """Decode an image file to a ``[H, W]`` greyscale array (DICOM via :func:`read_dicom`).

    ``max_side`` downsizes (aspect kept) while decoding. Raises :class:`StudyReadError` of kind
    ``missing_image`` or ``corrupt_image`` naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    _check_dtype(dtype)
    path = Path(path)
    if not path.is_file():
        raise StudyReadError("missing_image", "image file not found", path=path)
    if is_dicom(path):
        try:
            arr = read_dicom(path, output="float32")
        except (ValueError, OSError) as e:
            raise StudyReadError("corrupt_image", str(e).removeprefix(f"{path}: "), path=path) from e
        if max_side is not None and max(arr.shape) > max_side:
            arr = np.clip(_resize(arr, max_side), 0, 1).astype(np.float32)
        return np.round(arr * 255).astype(np.uint8) if dtype == "uint8" else arr
    try:
        with Image.open(path) as im:  # decoded in _from_pil, after the JPEG draft mode is set
            return _from_pil(im, max_side, dtype)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise StudyReadError("corrupt_image", f"cannot decode image ({type(e).__name__}: {e})", path=path) from e


def decode_image_value(
    value: Any,
    *,
    base_dir: str | Path | None = None,
    max_side: int | None = None,
    dtype: ImageDType = "uint8",
    what: str = "image",
) -> np.ndarray | None:
    """Any image-like value → ``[H, W]`` greyscale array (``None`` stays ``None``).

    Accepts a PIL image, a ``{"bytes": ..., "path": ...}`` dict (an undecoded ``datasets.Image``),
    raw file bytes, a path (relative paths resolve against ``base_dir``), or an array / nested list
    (``[H, W]``, ``[H, W, C]``; uint8 kept, other dtypes min-max scaled).
    """
    from PIL import Image, UnidentifiedImageError

    _check_dtype(dtype)
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise StudyReadError("bad_row", f"{what}: dict without 'bytes' or 'path'")
    if isinstance(value, Image.Image):
        try:
            value.load()
            return _from_pil(value, max_side, dtype)
        except (OSError, ValueError) as e:
            raise StudyReadError("corrupt_image", f"{what}: cannot decode PIL image ({e})") from e
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if len(data) >= 132 and data[128:132] == b"DICM":
            import pydicom

            from sae_rad_ext.data.dicom import dicom_to_array

            try:
                arr = dicom_to_array(pydicom.dcmread(io.BytesIO(data)), output="float32")
            except Exception as e:
                raise StudyReadError("corrupt_image", f"{what}: cannot decode DICOM bytes ({e})") from e
            return _array_out(arr, max_side, dtype)
        try:
            with Image.open(io.BytesIO(data)) as im:
                return _from_pil(im, max_side, dtype)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise StudyReadError("corrupt_image", f"{what}: cannot decode image bytes ({type(e).__name__}: {e})") from e
    if isinstance(value, str | Path):
        if str(value).strip() == "":
            return None
        path = Path(value)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        return load_image(path, max_side=max_side, dtype=dtype)
    arr = np.asarray(value)
    if arr.dtype == object or arr.ndim not in (2, 3):
        raise StudyReadError("bad_row", f"{what}: cannot use a {type(value).__name__} of shape {arr.shape} as an image")
    return _array_out(arr, max_side, dtype)


def _array_out(arr: np.ndarray, max_side: int | None, dtype: ImageDType) -> np.ndarray:
    if arr.ndim == 3:
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        elif arr.shape[-1] in (3, 4):
            grey = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            arr = np.round(grey).astype(np.uint8) if arr.dtype == np.uint8 else grey
        else:
            raise StudyReadError("bad_row", f"image array of shape {arr.shape}: expected [H, W] or [H, W, 1|3|4]")
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f" and arr.size and 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0:
            f = arr.astype(np.float64)
        elif arr.dtype.kind == "f" and arr.size and float(arr.max()) <= 255.0 and float(arr.min()) >= 0.0:
            f = arr.astype(np.float64) / 255.0
        else:
            a = arr.astype(np.float64)
            lo, hi = float(a.min()), float(a.max())
            f = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    else:
        f = None
    if max_side is not None and max(arr.shape[:2]) > max_side:
        f = np.clip(_resize(f if f is not None else arr.astype(np.float64) / 255.0, max_side), 0, 1)
    if f is None:
        return arr if dtype == "uint8" else arr.astype(np.float32) / 255.0
    return np.round(f * 255).astype(np.uint8) if dtype == "uint8" else f.astype(np.float32)
