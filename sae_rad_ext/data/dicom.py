"""DICOM radiographs → display-ready greyscale arrays.

The DICOM display pipeline, in order: stored values → modality LUT (``RescaleSlope/Intercept`` or a
Modality LUT Sequence) → VOI LUT (a VOI LUT Sequence, or ``WindowCenter/WindowWidth`` with its
``VOILUTFunction``) → presentation (``MONOCHROME1`` and ``PresentationLUTShape == INVERSE`` are
inverted so that high always means bright). Without any VOI the modality values are min-max
scaled. Output is ``float32`` in ``[0, 1]`` or ``uint8``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

Output = Literal["float32", "uint8"]


def is_dicom(path: str | Path) -> bool:
    """``.dcm``/``.dicom`` suffix, or the ``DICM`` magic at byte 128 (DICOM files often have no suffix)."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".txt", ".csv", ".json"):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _window_output_range(ds) -> tuple[float, float]:
    """The range pydicom's ``apply_windowing`` maps into (PS3.3 C.11.2.1.2, as pydicom implements it)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _to_grey(arr: np.ndarray, ds) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return arr


def dicom_to_array(
    ds,
    *,
    output: Output = "float32",
    voi: bool = True,
    window: tuple[float, float] | None = None,
    frame: int = 0,
) -> np.ndarray:
    """A loaded ``pydicom.Dataset`` → ``[H, W]`` greyscale (see :func:`read_dicom`)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError("the dataset has no pixel data (is it a structured report or presentation state?)")
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        if not 0 <= frame < arr.shape[0]:
            raise ValueError(f"frame {frame} out of range: the file has {arr.shape[0]} frames")
        arr = arr[frame]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return _finish(_minmax(_to_grey(arr, ds)), output)

    values = apply_modality_lut(arr, ds)
    if window is not None:
        center, width = window
        lo, hi = center - width / 2.0, center + width / 2.0
        out = np.clip((values.astype(np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    elif voi and ds.get("VOILUTSequence"):
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        lut_in = values
        if lut_in.dtype.kind == "f" and np.all(np.mod(lut_in, 1) == 0):
            lut_in = lut_in.astype(np.int64)
        out = apply_voi_lut(lut_in, ds, prefer_lut=True)
        out = np.clip(out.astype(np.float64) / float(2 ** int(descriptor[2]) - 1), 0.0, 1.0)
    elif voi and "WindowCenter" in ds and "WindowWidth" in ds:
        lo, hi = _window_output_range(ds)
        out = apply_voi_lut(values, ds, prefer_lut=False)
        out = np.clip((out.astype(np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    else:
        out = _minmax(values)
    inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if (photometric == "MONOCHROME1") != inverse:
        out = 1.0 - out
    return _finish(out, output)


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _finish(out: np.ndarray, output: Output) -> np.ndarray:
    if output == "uint8":
        return np.round(out * 255.0).astype(np.uint8)
    if output == "float32":
        return out.astype(np.float32)
    raise ValueError(f"output must be 'float32' or 'uint8', got {output!r}")


def read_dicom(
    path: str | Path,
    *,
    output: Output = "float32",
    voi: bool = True,
    window: tuple[float, float] | None = None,
    frame: int = 0,
) -> np.ndarray:
    """Read a DICOM radiograph as a ``[H, W]`` display-ready greyscale image.

    Args:
        path: the ``.dcm`` file.
        output: ``"float32"`` (values in ``[0, 1]``) or ``"uint8"``.
        voi: apply the file's VOI LUT / window (``False``: min-max of the modality values).
        window: ``(center, width)`` in modality units, overriding the file's VOI.
        frame: which frame of a multi-frame file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a DICOM file, no pixel data, or pixel data that cannot be decoded (the message
            names the file and, for compressed transfer syntaxes, the plugin to install).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such DICOM file")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise ValueError(f"{path}: not a DICOM file ({e})") from e
    except Exception as e:  # truncated headers raise assorted errors inside pydicom
        raise ValueError(f"{path}: unreadable DICOM ({type(e).__name__}: {e})") from e
    try:
        return dicom_to_array(ds, output=output, voi=voi, window=window, frame=frame)
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = ""
        if syntax is not None and getattr(syntax, "is_compressed", False):
            hint = (f"; transfer syntax {syntax.name} is compressed — install a decoder plugin "
                    "(e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`)")
        raise ValueError(f"{path}: cannot decode DICOM pixel data ({type(e).__name__}: {e}){hint}") from e
