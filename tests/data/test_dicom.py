"""DICOM decoding (real RG1_UNCR.dcm from pydicom-data + synthetic files) and the DICOM study reader."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from sae_rad_ext.data import (
    DicomReader,
    SourceError,
    StudyReadError,
    detect_source,
    load_image,
    open_studies,
    read_dicom,
)


@pytest.fixture(scope="module")
def rg1() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")  # shipped by pydicom-data; no network
    assert path is not None, "pydicom-data is a test dependency: pip install -e '.[test]'"
    return Path(path)


def _write(path: Path, pixels: np.ndarray, *, photometric="MONOCHROME2", bits_stored=12, signed=False,
           study_uid=None, view=None, **tags) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.Modality = "DX"
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp(h=16, w=20, hi=4095) -> np.ndarray:
    return np.tile(np.linspace(0, hi, w).round(), (h, 1)).astype(np.int64)


# -- read_dicom on the real radiograph -----------------------------------------------------------


def test_real_chest_radiograph_renders(rg1):
    ds = pydicom.dcmread(rg1)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and int(ds.BitsStored) == 15
    img = read_dicom(rg1)
    assert img.shape == (1955, 1841) and img.dtype == np.float32
    assert 0.0 <= img.min() < 0.3 and 0.9 < img.max() <= 1.0
    h, w = img.shape
    band = slice(h // 3, 2 * h // 3)
    mediastinum = img[band, w // 2 - 100 : w // 2 + 100].mean()
    lungs = (img[band, w // 4 - 100 : w // 4 + 100].mean() + img[band, 3 * w // 4 - 100 : 3 * w // 4 + 100].mean()) / 2
    assert lungs + 0.1 < mediastinum, (lungs, mediastinum)  # air dark, mediastinum bright: not inverted
    # MONOCHROME1: high stored values are dark, so the display image runs opposite to the raw pixels
    raw = ds.pixel_array[::8, ::8].astype(np.float64).ravel()
    assert np.corrcoef(raw, img[::8, ::8].ravel())[0, 1] < -0.99
    u8 = read_dicom(rg1, output="uint8")
    assert u8.dtype == np.uint8 and np.abs(u8.astype(np.float64) / 255 - img).max() <= 0.5 / 255 + 1e-6
    small = load_image(rg1, max_side=256)
    assert max(small.shape) == 256 and small.dtype == np.uint8


def test_real_dicom_through_processor_and_tiny_model(rg1, tmp_path):
    import torch
    from sae_rad_ext.adapters import HookedMaira2, Maira2Processor, Role

    (tmp_path / "reports.csv").write_text(f"file,findings,indication\n{rg1},Clear lungs. No effusion.,Cough\n")
    (study,) = open_studies(rg1, sidecar=tmp_path / "reports.csv")
    assert study.findings == "Clear lungs. No effusion." and study.indication == "Cough"
    hm = HookedMaira2.tiny(seed=0)
    proc = Maira2Processor.from_model_config(hm.model.config, hm.tokenizer)
    batch = proc.build([study])
    n_img = int((batch.input_ids == proc.image_token_id).sum())
    assert batch.pixel_values.shape[0] == 1 and n_img == proc.tokens_per_image == hm.cfg.tokens_per_image
    assert int((batch.roles.role == Role.IMAGE).sum()) == n_img
    with torch.no_grad():
        logits, cache = hm.run_with_cache(batch.input_ids, pixel_values=batch.pixel_values,
                                          attention_mask=batch.attention_mask, names_filter="blocks.0.hook_resid_post")
    assert logits.shape[:2] == batch.input_ids.shape and torch.isfinite(logits).all()
    assert cache["blocks.0.hook_resid_post"].shape[:2] == batch.input_ids.shape


# -- synthetic files: photometric, LUTs, bit depth ----------------------------------------------


def test_monochrome1_is_inverted(tmp_path):
    px = _ramp()
    m2 = read_dicom(_write(tmp_path / "m2.dcm", px))
    m1 = read_dicom(_write(tmp_path / "m1.dcm", px, photometric="MONOCHROME1"))
    assert m2[0, 0] == 0.0 and m2[0, -1] == 1.0 and np.all(np.diff(m2[0]) > 0)
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    inv = read_dicom(_write(tmp_path / "inv.dcm", px, PresentationLUTShape="INVERSE"))
    np.testing.assert_allclose(inv, m1, atol=1e-6)


def test_window_rescale_and_signed(tmp_path):
    px = _ramp()
    # window 1024..3072 in a 12-bit image: below -> 0, above -> 1, linear between
    w = read_dicom(_write(tmp_path / "w.dcm", px, WindowCenter=2048, WindowWidth=2048))
    assert w[0, 0] == 0.0 and w[0, -1] == 1.0
    mid = (px[0] > 1200) & (px[0] < 2900)
    np.testing.assert_allclose(w[0][mid], (px[0][mid] - 2047.5) / 2047 + 0.5, atol=2e-3)
    # signed CT-like values with rescale; the window is in rescaled units
    sp = (_ramp(hi=2000) - 1000).astype(np.int64)
    s = read_dicom(_write(tmp_path / "s.dcm", sp, signed=True, RescaleSlope=1, RescaleIntercept=-24,
                          WindowCenter=-24, WindowWidth=400))
    rescaled = sp[0] - 24
    inside = np.abs(rescaled + 24) < 150
    assert np.all(s[0][rescaled < -250] == 0) and np.all(s[0][rescaled > 200] == 1)
    np.testing.assert_allclose(s[0][inside], (rescaled[inside] + 24.5) / 399 + 0.5, atol=3e-3)
    # no VOI: min-max of modality values; voi=False ignores the window
    n = read_dicom(_write(tmp_path / "n.dcm", px[:, :10] + 100, bits_stored=16))
    assert n.min() == 0.0 and n.max() == 1.0
    nv = read_dicom(tmp_path / "w.dcm", voi=False)
    assert nv.min() == 0.0 and nv.max() == 1.0 and np.all(np.diff(nv[0]) > 0)
    ov = read_dicom(tmp_path / "w.dcm", window=(1000, 1000))
    assert ov[0, 0] == 0 and ov[0, -1] == 1 and 0 < ov[0, 3] < 1


def test_voi_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUTDescriptor
    item.add_new(0x00283006, "US", [min(4095, 2 * i) for i in range(4096)])  # LUTData: gain 2, saturating
    path = _write(tmp_path / "lut.dcm", _ramp(), VOILUTSequence=[item])
    img = read_dicom(path)
    assert img[0, 0] == 0.0 and img[0, -1] == 1.0
    assert abs(float(img[0, 5]) - min(1.0, 2 * _ramp()[0, 5] / 4095)) < 1e-3


def test_corrupt_and_wrong_files_name_the_file(tmp_path):
    good = _write(tmp_path / "good.dcm", _ramp())
    data = good.read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) - 200])
    (tmp_path / "text.dcm").write_text("hello")
    with pytest.raises(ValueError, match="trunc.dcm"):
        read_dicom(tmp_path / "trunc.dcm")
    with pytest.raises(ValueError, match="text.dcm"):
        read_dicom(tmp_path / "text.dcm")
    with pytest.raises(FileNotFoundError, match="nope.dcm"):
        read_dicom(tmp_path / "nope.dcm")
    with pytest.raises(StudyReadError) as e:
        load_image(tmp_path / "trunc.dcm")
    assert e.value.kind == "corrupt_image" and "trunc.dcm" in str(e.value)


# -- the DICOM study reader ------------------------------------------------------------------------


def test_dicom_folder_with_sidecar(tmp_path, rg1):
    d = tmp_path / "dcm"
    s1, s2, s3 = generate_uid(), generate_uid(), generate_uid()
    _write(d / "a" / "lat.dcm", _ramp(), study_uid=s1, view="LATERAL")
    _write(d / "a" / "pa.dcm", _ramp(), study_uid=s1, view="PA", photometric="MONOCHROME1")
    _write(d / "b" / "ap", _ramp(), study_uid=s2, view="AP")  # no suffix: found by the DICM magic
    _write(d / "c" / "x.dcm", _ramp(), study_uid=s3, view="PA")
    _write(d / "d" / "lat_only.dcm", _ramp(), view="LL")
    with open(d / "sidecar.csv", "w", newline="") as f:
        csv.writer(f).writerows([["study_id", "findings", "indication"], [s1, "Normal chest.", "Cough"],
                                 [s2, "", ""]])
    assert detect_source(d) == ("dicom", d)
    reader = open_studies(d, on_error="skip")
    assert isinstance(reader, DicomReader) and reader.count() == 4
    got = list(reader)
    assert [s.study_id for s in got] == [s1]
    (a,) = got
    assert a.lateral is not None and a.findings == "Normal chest." and a.indication == "Cough"
    assert a.metadata["frontal_path"].endswith("pa.dcm") and a.frontal[0, 0] == 255  # MONOCHROME1 ramp inverted
    assert dict(reader.stats.reasons) == {"missing_report": 2} and dict(reader.stats.filtered) == {"no_frontal": 1}
    with pytest.raises(StudyReadError, match=r"b/ap"):
        list(DicomReader(d))
    # images only: no findings needed
    plain = list(DicomReader(d, sidecar=None, require_findings=False, group_by="file"))
    assert len(plain) == 5 and all(s.findings is None for s in plain)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no DICOM files"):
        DicomReader(tmp_path / "empty")


def test_manifest_with_dicom_paths(tmp_path, rg1):
    row = {"study_id": "rg1", "frontal": str(rg1), "report": "FINDINGS: Clear lungs.\nIMPRESSION: Normal."}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    (s,) = open_studies(tmp_path / "m.jsonl", max_side=512)
    assert s.findings == "Clear lungs." and s.impression == "Normal." and max(s.frontal.shape) == 512
