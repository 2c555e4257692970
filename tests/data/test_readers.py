"""Study readers: MIMIC-CXR-JPG layout, manifests, Hugging Face datasets, open_studies."""

from __future__ import annotations

import csv
import gzip
import json
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sae_rad_ext.data import (
    HFDatasetReader,
    ManifestReader,
    MimicCxrReader,
    SourceError,
    Study,
    StudyReadError,
    count_studies,
    detect_source,
    open_studies,
    register_source,
)

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with {ind}

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 {findings}

 IMPRESSION:

 {impression}
"""
NO_FINDINGS_REPORT = """                                 FINAL REPORT
 INDICATION:  Line placement.

 IMPRESSION:  Right IJ catheter tip in the SVC.  No pneumothorax.
"""

# study, subject, date, time, [(dicom_id, view)], what is special
STUDIES = [
    ("50000001", "10000001", "21800101", "101010.5", [("d1pa", "PA"), ("d1lat", "LATERAL")], "ok"),
    ("50000002", "10000001", "21800304", "080000", [("d2ap", "AP"), ("d2pa", "PA")], "ok"),
    ("50000003", "10000002", "21800101", "120000", [("d3pa", "PA"), ("d3ll", "LL")], "no_findings"),
    ("50000004", "10000002", "21810101", "120000", [("d4pa", "PA")], "missing_image"),
    ("50000005", "10000002", "21820101", "120000", [("d5lat", "LATERAL")], "lateral_only"),
    ("50000006", "11000003", "21800101", "000000", [("d6ap", "AP")], "corrupt_image"),
    ("50000007", "11000003", "21800505", "000000", [("d7pa", "PA")], "missing_report"),
]
SPLITS = {"50000001": "train", "50000002": "train", "50000003": "validate", "50000004": "test",
          "50000005": "test", "50000006": "train", "50000007": "train"}


def _jpeg(path: Path, seed: int, size=(48, 40)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), mode="L").save(path, quality=90)


def make_mimic(root: Path, *, gz: bool = False, reports: str = "beside") -> Path:
    """A tiny MIMIC-CXR-JPG folder: 7 studies, one per failure mode (see STUDIES)."""
    meta_rows = []
    for n, (study, subject, date, time, images, special) in enumerate(STUDIES):
        sdir = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        for k, (dicom_id, view) in enumerate(images):
            meta_rows.append([dicom_id, subject, study, f"CHEST ({view})", view, 40, 48, date, time])
            if special == "missing_image":
                continue
            if special == "corrupt_image":
                sdir.mkdir(parents=True, exist_ok=True)
                (sdir / f"{dicom_id}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
                continue
            _jpeg(sdir / f"{dicom_id}.jpg", 10 * n + k)
        rel = Path(f"p{subject[:2]}") / f"p{subject}" / f"s{study}.txt"
        rpath = root / "files" / rel if reports == "beside" else root / "mimic-cxr-reports" / "files" / rel
        if special == "missing_report":
            continue
        rpath.parent.mkdir(parents=True, exist_ok=True)
        text = NO_FINDINGS_REPORT if special == "no_findings" else REPORT.format(
            ind=f"cough {study}", findings=f"Findings of study {study}.  Small left\n effusion.",
            impression=f"Impression {study}.")
        rpath.write_text(text)
    header = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
              "Rows", "Columns", "StudyDate", "StudyTime"]
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv", header, meta_rows, gz)
    split_rows = [[r[0], r[2], r[1], SPLITS[r[2]]] for r in meta_rows]
    _write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split_rows, gz)
    cx_header = ["subject_id", "study_id", "Cardiomegaly", "Consolidation", "Lung Opacity", "No Finding",
                 "Pleural Effusion", "Pneumothorax", "Support Devices"]
    cx_rows = [["10000001", "50000001", "1.0", "1.0", "", "", "-1.0", "0.0", ""],
               ["10000001", "50000002", "", "0.0", "-1.0", "", "", "", "1.0"]]
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", cx_header, cx_rows, gz)
    return root


def _write_csv(path: Path, header, rows, gz: bool) -> None:
    if gz:
        with gzip.open(str(path) + ".gz", "wt", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    else:
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])


@pytest.fixture
def mimic(tmp_path):
    return make_mimic(tmp_path / "mimic")


def test_mimic_reads_expected_studies_then_raises_naming_the_report(mimic):
    reader = open_studies(mimic)
    assert isinstance(reader, MimicCxrReader)
    s1 = next(reader)
    assert isinstance(s1, Study) and s1.study_id == "s50000001"
    assert s1.frontal.shape == (40, 48) and s1.frontal.dtype == np.uint8
    expected = np.asarray(Image.open(mimic / "files/p10/p10000001/s50000001/d1pa.jpg"))
    np.testing.assert_array_equal(s1.frontal, expected)
    assert s1.lateral is not None and s1.prior_frontal is None
    assert s1.findings == "Findings of study 50000001. Small left effusion."
    assert s1.indication == "___ with cough 50000001" and s1.technique == "Chest PA and lateral"
    assert s1.comparison == "___" and s1.impression == "Impression 50000001."
    assert s1.labels == {"cardiomegaly": 1, "pleural_effusion": -1, "pneumothorax": 0, "lung_opacity": 1,
                         "support_lines_tubes": None, "pacemaker": None, "no_finding": None}
    assert s1.metadata["subject_id"] == "p10000001" and s1.metadata["split"] == "train"
    assert s1.metadata["view_positions"] == {"d1pa": "PA", "d1lat": "LATERAL"}
    s2 = next(reader)
    assert s2.study_id == "s50000002" and s2.metadata["frontal_view"] == "PA"  # PA preferred over AP
    assert s2.lateral is None and s2.labels["lung_opacity"] == -1 and s2.labels["support_lines_tubes"] == 1
    with pytest.raises(StudyReadError) as e:
        next(reader)
    assert e.value.kind == "no_findings" and e.value.study_id == "s50000003"
    assert "s50000003.txt" in str(e.value) and "FINDINGS" in str(e.value)


def test_mimic_errors_name_the_file(mimic):
    errors = {}
    for sid in ("s50000004", "s50000006", "s50000007"):
        with pytest.raises(StudyReadError) as e:
            list(open_studies(mimic, study_ids=[sid]))
        errors[sid] = e.value
    assert errors["s50000004"].kind == "missing_image" and "d4pa.jpg" in str(errors["s50000004"])
    assert errors["s50000006"].kind == "corrupt_image" and "d6ap.jpg" in str(errors["s50000006"])
    assert errors["s50000007"].kind == "missing_report" and "s50000007.txt" in str(errors["s50000007"])


def test_mimic_skip_and_count(mimic):
    reader = open_studies(mimic, on_error="skip")
    ids = [s.study_id for s in reader]
    assert ids == ["s50000001", "s50000002"]
    st = reader.stats
    assert st.n_read == 2 and st.n_skipped == 4 and st.n_filtered == 1
    assert dict(st.reasons) == {"no_findings": 1, "missing_image": 1, "corrupt_image": 1, "missing_report": 1}
    assert dict(st.filtered) == {"no_frontal": 1}
    assert [ex.study_id for ex in st.examples] == ["s50000003", "s50000004", "s50000006", "s50000007"]
    assert st.examples[1].path.endswith("d4pa.jpg")
    assert "skipped 1 × missing_image" in st.summary()
    again = reader.reopen()
    assert [s.study_id for s in again] == ids and again.stats.n_skipped == 4


def test_mimic_filters_prior_and_options(tmp_path):
    root = make_mimic(tmp_path / "m", gz=True, reports="separate")
    assert count_studies(root) == 6  # frontal studies, from the CSVs alone
    assert count_studies(root, split="train") == 4
    train = list(open_studies(root, split="train", on_error="skip"))
    assert [s.study_id for s in train] == ["s50000001", "s50000002"]
    lat = open_studies(root, require_views=["lateral"], on_error="skip")
    assert [s.study_id for s in lat] == ["s50000001"]
    assert lat.stats.filtered["no_lateral"] == 4
    prior = list(open_studies(root, with_prior=True, study_ids=["s50000002"]))
    assert len(prior) == 1 and prior[0].metadata["prior_study_id"] == "s50000001"
    assert prior[0].prior_frontal is not None and prior[0].prior_report == "Findings of study 50000001. Small left effusion."
    nf = list(open_studies(root, require_findings=False, study_ids=["50000003"]))
    assert nf[0].findings is None and nf[0].report.startswith("Right IJ catheter tip")
    assert nf[0].indication == "Line placement."
    small = next(open_studies(root, max_side=24, dtype="float32"))
    assert max(small.frontal.shape) <= 24 and small.frontal.dtype == np.float32 and small.frontal.max() <= 1
    assert len(list(open_studies(root, max_studies=1))) == 1
    shards = [[s.study_id for s in open_studies(root, on_error="skip", shard=(r, 2))] for r in range(2)]
    assert sorted(shards[0] + shards[1]) == ["s50000001", "s50000002"] and not set(shards[0]) & set(shards[1])


def test_mimic_is_streaming(mimic, monkeypatch):
    import sae_rad_ext.data.mimic as mimic_mod

    calls = []
    real = mimic_mod.load_image
    monkeypatch.setattr(mimic_mod, "load_image", lambda p, **kw: calls.append(Path(p).name) or real(p, **kw))
    reader = open_studies(mimic, on_error="skip")
    assert isinstance(reader, types.GeneratorType) or hasattr(reader, "__next__")
    assert calls == []  # opening decodes nothing
    first = next(reader)
    assert first.study_id == "s50000001" and calls == ["d1pa.jpg", "d1lat.jpg"]


def test_mimic_source_errors(tmp_path):
    (tmp_path / "files").mkdir()
    with pytest.raises(SourceError, match="metadata"):
        open_studies(tmp_path)
    root = make_mimic(tmp_path / "m", reports="separate")
    import shutil

    shutil.rmtree(root / "mimic-cxr-reports")
    with pytest.raises(SourceError, match="require_findings=False"):
        open_studies(root)
    assert [s.study_id for s in open_studies(root, require_findings=False, on_error="skip")][:2] == ["s50000001", "s50000002"]
    with pytest.raises(SourceError, match="split"):
        (root / "mimic-cxr-2.0.0-split.csv").unlink()
        open_studies(root, split="train", require_findings=False)
    with pytest.raises(ValueError, match="on_error"):
        open_studies(root, on_error="ignore", require_findings=False)


# -- manifests ----------------------------------------------------------------------------------------


def _manifest_dir(tmp_path: Path) -> Path:
    d = tmp_path / "man"
    _jpeg(d / "img" / "a_front.jpg", 1)
    _jpeg(d / "img" / "a_lat.jpg", 2)
    _jpeg(d / "img" / "b_front.png", 3)
    (d / "reports").mkdir()
    (d / "reports" / "c.txt").write_text(REPORT.format(ind="dyspnea", findings="Clear lungs.", impression="Normal."))
    return d


def test_manifest_csv_and_jsonl(tmp_path):
    d = _manifest_dir(tmp_path)
    rows = [
        {"study_id": "a", "frontal": "img/a_front.jpg", "lateral": "img/a_lat.jpg", "findings": "Mild cardiomegaly.",
         "indication": "Chest pain", "cardiomegaly": "1", "site": "x"},
        {"study_id": "b", "frontal": "img/b_front.png", "lateral": "", "findings": "No effusion.",
         "indication": "", "cardiomegaly": "0", "site": "y"},
        {"study_id": "c", "frontal": "img/b_front.png", "lateral": "", "findings": "", "report_path": "reports/c.txt",
         "indication": "", "cardiomegaly": "", "site": "z"},
        {"study_id": "d", "frontal": "img/missing.jpg", "lateral": "", "findings": "Text.", "indication": "",
         "cardiomegaly": "", "site": "w"},
    ]
    with open(d / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["study_id", "frontal", "lateral", "findings", "report_path", "indication",
                                          "cardiomegaly", "site"])
        w.writeheader()
        w.writerows(rows)
    (d / "studies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for path in (d / "manifest.csv", d / "studies.jsonl"):
        reader = open_studies(path, on_error="skip")
        assert isinstance(reader, ManifestReader)
        got = list(reader)
        assert [s.study_id for s in got] == ["a", "b", "c"]
        a, b, c = got
        assert a.lateral is not None and a.indication == "Chest pain" and a.labels["cardiomegaly"] == 1
        assert a.metadata["site"] == "x" and a.metadata["frontal_path"] == "img/a_front.jpg"
        assert b.lateral is None and b.labels["cardiomegaly"] == 0 and b.indication is None
        assert c.findings == "Clear lungs." and c.indication == "___ with dyspnea" and c.impression == "Normal."
        assert reader.stats.reasons == {"missing_image": 1}
        assert "missing.jpg" in reader.stats.examples[0].path
        assert count_studies(path) == 4
    assert detect_source(d) == ("manifest", d / "manifest.csv")
    with pytest.raises(StudyReadError, match="missing.jpg"):
        list(open_studies(d / "manifest.csv"))


def test_manifest_column_validation(tmp_path):
    d = _manifest_dir(tmp_path)
    (d / "m.csv").write_text("id,image_file,notes\n1,img/a_front.jpg,Clear.\n")
    with pytest.raises(SourceError) as e:
        open_studies(d / "m.csv")
    msg = str(e.value)
    assert "frontal" in msg and "image_file" in msg and "notes" in msg  # expected vs found
    with pytest.raises(SourceError, match="findings are required"):
        open_studies(d / "m.csv", columns={"frontal": "image_file"})
    with pytest.raises(SourceError, match="no column 'nope'"):
        open_studies(d / "m.csv", columns={"frontal": "image_file", "findings": "nope"})
    (s,) = open_studies(d / "m.csv", columns={"frontal": "image_file", "findings": "notes"})
    assert s.study_id == "1" and s.findings == "Clear." and s.frontal.shape == (40, 48)
    (d / "r.csv").write_text('frontal,report\nimg/a_front.jpg,"Lungs are clear.\n No effusion."\n')
    (r,) = open_studies(d / "r.csv")
    assert r.findings == "Lungs are clear. No effusion." and r.metadata["report_sections"] == {"preamble": r.findings}
    (d / "e.csv").write_text("frontal,findings\nimg/a_front.jpg,\n")
    with pytest.raises(StudyReadError) as e2:
        list(open_studies(d / "e.csv"))
    assert e2.value.kind == "missing_report" and "e.csv" in str(e2.value)


# -- Hugging Face datasets -------------------------------------------------------------------------


def test_hf_load_from_disk_with_column_mapping(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (32, 30), dtype=np.uint8), mode="L") for _ in range(3)]
    ds = datasets.Dataset.from_dict(
        {"img": imgs, "lat": [None, imgs[0], None], "text": ["Effusion.", "Normal.", ""], "uid": ["x", "y", "z"],
         "pleural_effusion": [1, 0, None]},
        features=datasets.Features({"img": datasets.Image(), "lat": datasets.Image(), "text": datasets.Value("string"),
                                    "uid": datasets.Value("string"), "pleural_effusion": datasets.Value("float32")}),
    )
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "hfds"))
    assert detect_source(tmp_path / "hfds")[0] == "hf"
    reader = open_studies(tmp_path / "hfds", columns={"frontal": "img", "lateral": "lat", "study_id": "uid"},
                          on_error="skip")
    assert isinstance(reader, HFDatasetReader)
    got = list(reader)
    assert [s.study_id for s in got] == ["x", "y"] and reader.stats.reasons == {"missing_report": 1}
    np.testing.assert_array_equal(got[0].frontal, np.asarray(imgs[0]))
    assert got[0].findings == "Effusion." and got[0].labels["pleural_effusion"] == 1 and got[0].lateral is None
    assert got[1].lateral is not None
    assert count_studies(tmp_path / "hfds", columns={"frontal": "img"}) == 3
    assert len(list(open_studies(tmp_path / "hfds", split="test", columns={"frontal": "img"}))) == 1
    # an in-memory dataset object, images as arrays and bytes
    import io

    buf = io.BytesIO()
    imgs[1].save(buf, format="PNG")
    mem = datasets.Dataset.from_dict({"image": [buf.getvalue()], "findings": ["Clear."]})
    (s,) = open_studies(mem)
    np.testing.assert_array_equal(s.frontal, np.asarray(imgs[1]))


def test_hf_imagefolder_streaming(tmp_path):
    d = tmp_path / "imgs"
    _jpeg(d / "s1.jpg", 1)
    _jpeg(d / "s2.jpg", 2)
    (d / "metadata.csv").write_text("file_name,findings,study_id\ns1.jpg,Clear lungs.,s1\ns2.jpg,Small effusion.,s2\n")
    assert detect_source(d) == ("imagefolder", d)
    reader = open_studies(d)
    first = next(reader)
    assert first.study_id in ("s1", "s2") and first.frontal.shape == (40, 48)
    assert {first.findings, next(reader).findings} == {"Clear lungs.", "Small effusion."}
    assert count_studies(d) == 2


def test_open_studies_errors_and_schemes(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_studies(tmp_path / "nope")
    (tmp_path / "x.bin").write_bytes(b"123")
    with pytest.raises(SourceError, match="cannot tell"):
        open_studies(tmp_path / "x.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="kind="):
        open_studies(tmp_path / "empty")
    seen = {}

    def opener(rest, **kw):
        seen.update(rest=rest, **kw)
        return iter([])

    register_source("fakesrc", opener)
    assert list(open_studies("fakesrc:n=3", on_error="skip")) == [] and seen == {"rest": "n=3", "on_error": "skip"}


def test_phantom_output_reads_as_mimic_and_phantom(tmp_path):
    from sae_rad_ext.data.phantom.io import write_phantom_dataset

    out = write_phantom_dataset(tmp_path / "ph", 6, seed=3, image_size=32, prior_prob=0.5)
    assert detect_source(out)[0] == "phantom" and detect_source(out / "mimic")[0] == "mimic"
    truth = {int(s.metadata["index"]): s for s in open_studies(out)}
    assert len(truth) == 6 and all("masks" in s.metadata for s in truth.values())
    mimic = open_studies(out / "mimic", with_prior=True)
    got = {}
    for s in mimic:
        n = int(s.study_id[1:]) - 50_000_000
        if n % 2 == 0:  # current studies; odd ids are the priors written as earlier studies
            got[n // 2] = s
    assert sorted(got) == sorted(truth) and mimic.stats.n_skipped == 0
    for i, s in got.items():
        t = truth[i]
        assert s.findings == t.findings and s.indication == t.indication and s.labels == t.labels
        assert s.frontal.shape == t.frontal.shape and np.abs(s.frontal.astype(int) - t.frontal).mean() < 8  # JPEG
        assert (s.lateral is None) == (t.lateral is None) and (s.prior_frontal is None) == (t.prior_frontal is None)
        if t.prior_frontal is not None:
            assert s.prior_report == t.prior_report
    assert any(s.prior_frontal is not None for s in got.values())
