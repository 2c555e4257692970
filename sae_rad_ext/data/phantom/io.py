"""Write phantom studies as a ``datasets`` folder and in MIMIC-CXR-JPG layout; read them back.

``write_phantom_dataset(out, n, seed)`` writes, atomically (temp dir + rename)::

    out/dataset/                     datasets.save_to_disk (PNG bytes, packed masks, text, labels, split)
    out/mimic/files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg
    out/mimic/files/pXX/pXXXXXXXX/sXXXXXXXX.txt           (FINAL REPORT with sections)
    out/mimic/mimic-cxr-2.0.0-metadata.csv, -split.csv, -chexpert.csv
    out/phantom.json                 (seed, n, options, mask keys)

Priors are written to the MIMIC layout as earlier studies of the same subject (own report and date).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from sae_rad_ext.data.phantom.generator import MASK_KEYS, make_study
from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.util.files import atomic_dir
from sae_rad_ext.util.progress import ProgressCallback, Ticker

META_COLS = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
             "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
             "PatientOrientationCodeSequence_CodeMeaning"]


def _png(a: np.ndarray | None) -> bytes | None:
    if a is None:
        return None
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def _unpng(b: bytes | None) -> np.ndarray | None:
    return None if b is None else np.array(Image.open(io.BytesIO(b)))


def pack_masks(masks: dict[str, np.ndarray] | None) -> bytes | None:
    if masks is None:
        return None
    return np.packbits(np.stack([masks[k].astype(bool) for k in MASK_KEYS])).tobytes()


def unpack_masks(b: bytes | None, size: int) -> dict[str, np.ndarray] | None:
    if b is None:
        return None
    n = len(MASK_KEYS) * size * size
    bits = np.unpackbits(np.frombuffer(b, np.uint8))[:n].reshape(len(MASK_KEYS), size, size)
    return {k: bits[i] for i, k in enumerate(MASK_KEYS)}


def _row(s: Study) -> dict:
    meta = {k: v for k, v in s.metadata.items() if k != "masks"}
    m = s.metadata["masks"]
    return {
        "study_id": s.study_id, "split": meta["split"], "frontal": _png(s.frontal), "lateral": _png(s.lateral),
        "prior_frontal": _png(s.prior_frontal), "prior_report": s.prior_report, "indication": s.indication,
        "technique": s.technique, "comparison": s.comparison, "findings": s.findings, "impression": s.impression,
        **{f"label_{k}": s.labels[k] for k in (*FINDINGS, "no_finding")},
        "masks_frontal": pack_masks(m.get("frontal")), "masks_lateral": pack_masks(m.get("lateral")),
        "masks_prior_frontal": pack_masks(m.get("prior_frontal")), "metadata": json.dumps(meta, default=str),
    }


def row_to_study(r: dict) -> Study:
    meta = json.loads(r["metadata"])
    size = int(meta["image_size"])
    masks = {v: unpack_masks(r[f"masks_{v}"], size) for v in ("frontal", "lateral", "prior_frontal")}
    meta["masks"] = {k: v for k, v in masks.items() if v is not None}
    return Study(
        study_id=r["study_id"], frontal=_unpng(r["frontal"]), lateral=_unpng(r["lateral"]),
        prior_frontal=_unpng(r["prior_frontal"]), prior_report=r["prior_report"], indication=r["indication"],
        technique=r["technique"], comparison=r["comparison"], findings=r["findings"], impression=r["impression"],
        labels={k: r[f"label_{k}"] for k in (*FINDINGS, "no_finding")}, metadata=meta,
    )


def _make(args):
    seed, i, kw = args
    return make_study(seed, i, **kw)


def iter_studies(n: int, seed: int, workers: int = 1, **kw) -> Iterator[Study]:
    """Like ``generate_studies`` but optionally across ``workers`` processes (same pixels, same order)."""
    jobs = [(seed, i, kw) for i in range(n)]
    if workers <= 1:
        yield from map(_make, jobs)
        return
    import multiprocessing as mp

    ctx = get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")  # fork: no __main__ guard needed
    with ctx.Pool(workers) as pool:
        yield from pool.imap(_make, jobs, chunksize=4)


def _ids(s: Study) -> tuple[int, int, int]:
    i = int(s.metadata["index"])
    return 10_000_000 + i, 50_000_000 + 2 * i, 50_000_000 + 2 * i + 1


def _dicom_id(*parts) -> str:
    h = hashlib.sha1("-".join(map(str, parts)).encode()).hexdigest()
    return "-".join(h[k: k + 8] for k in range(0, 40, 8))


def mimic_report(s: Study, *, prior: bool = False) -> str:
    views = s.metadata["view_position"] + (" AND LAT" if s.lateral is not None else "")
    if prior:
        return (f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PORTABLE AP)\n \n"
                f" INDICATION:  ___ with shortness of breath.\n \n TECHNIQUE:  Frontal view of the chest.\n \n"
                f" COMPARISON:  None.\n \n FINDINGS:\n \n {s.prior_report}\n")
    return (f"                                 FINAL REPORT\n EXAMINATION:  CHEST ({views})\n \n"
            f" INDICATION:  {s.indication}\n \n TECHNIQUE:  {s.technique}\n \n COMPARISON:  {s.comparison}\n \n"
            f" FINDINGS:\n \n {s.findings}\n \n IMPRESSION:\n \n {s.impression}\n")


class _UnhashedTicker(Ticker):
    """A :class:`Ticker` that pickles as an empty one: ``datasets`` fingerprints the row generator by
    pickling its closure, and the display behind a callback (locks, a console) does not pickle."""

    def __getstate__(self) -> dict[str, object]:
        return {"progress": None, "stage": self.stage, "total": self.total, "done": 0}


def write_phantom_dataset(out_dir: str | os.PathLike, n: int, seed: int = 0, *, workers: int = 1,
                          overwrite: bool = False, jpeg_quality: int = 92,
                          progress: ProgressCallback | None = None, **kw) -> Path:
    """Generate ``n`` studies and write both layouts atomically; returns ``out_dir``.
    ``progress``: stage ``"phantom studies"`` counts studies written (``done`` reaches ``n``)."""
    from datasets import Dataset, Features, Value

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        mimic = tmp / "mimic"
        (mimic / "files").mkdir(parents=True)
        meta_rows, split_rows, chex_rows = [], [], []
        feats = Features({
            "study_id": Value("string"), "split": Value("string"), "frontal": Value("binary"),
            "lateral": Value("binary"), "prior_frontal": Value("binary"), "prior_report": Value("string"),
            "indication": Value("string"), "technique": Value("string"), "comparison": Value("string"),
            "findings": Value("string"), "impression": Value("string"),
            **{f"label_{k}": Value("int8") for k in (*FINDINGS, "no_finding")},
            "masks_frontal": Value("binary"), "masks_lateral": Value("binary"),
            "masks_prior_frontal": Value("binary"), "metadata": Value("string"),
        })

        tick = _UnhashedTicker(progress, "phantom studies", n)

        def rows():
            for s in iter_studies(n, seed, workers=workers, **kw):
                subj, st_id, prior_id = _ids(s)
                folder = mimic / "files" / f"p{str(subj)[:2]}" / f"p{subj}"
                entries = [(st_id, s.metadata["study_date"], [(s.metadata["view_position"], s.frontal)]
                            + ([("LATERAL", s.lateral)] if s.lateral is not None else []), mimic_report(s))]
                if s.prior_frontal is not None:
                    entries.append((prior_id, s.metadata["prior_date"], [("PA", s.prior_frontal)],
                                    mimic_report(s, prior=True)))
                for sid, dt, images, text in entries:
                    sdir = folder / f"s{sid}"
                    sdir.mkdir(parents=True, exist_ok=True)
                    (folder / f"s{sid}.txt").write_text(text)
                    for view, img in images:
                        did = _dicom_id(seed, sid, view)
                        Image.fromarray(img).save(sdir / f"{did}.jpg", quality=jpeg_quality)
                        meta_rows.append([did, subj, sid, "CHEST (PA AND LAT)", view, img.shape[0], img.shape[1],
                                          dt.replace("-", ""), "120000.000", "Chest 2V PA and Lat",
                                          {"PA": "postero-anterior", "AP": "antero-posterior"}.get(view, "lateral"),
                                          "Erect"])
                        split_rows.append([did, sid, subj, s.metadata["split"]])
                chex_rows.append([subj, st_id] + [s.labels[k] for k in (*FINDINGS, "no_finding")])
                tick(1)
                yield _row(s)

        ds = Dataset.from_generator(rows, features=feats, cache_dir=str(tmp / ".cache"))
        ds.save_to_disk(str(tmp / "dataset"))
        del ds
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        for name, header, body in (("metadata", META_COLS, meta_rows),
                                   ("split", ["dicom_id", "study_id", "subject_id", "split"], split_rows),
                                   ("chexpert", ["subject_id", "study_id", *FINDINGS, "no_finding"], chex_rows)):
            with open(mimic / f"mimic-cxr-2.0.0-{name}.csv", "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(header)
                w.writerows(body)
        (tmp / "phantom.json").write_text(json.dumps({"seed": seed, "n": n, "options": kw,
                                                      "mask_keys": list(MASK_KEYS)}, indent=1, default=str))
    return out


def load_phantom_dataset(path: str | os.PathLike, split: str | None = None) -> Iterator[Study]:
    """Stream ``Study`` values from ``write_phantom_dataset``'s ``dataset`` folder (memory-mapped Arrow)."""
    from datasets import load_from_disk

    p = Path(path)
    ds = load_from_disk(str(p / "dataset" if (p / "dataset").exists() else p))
    if split is not None:
        ds = ds.filter(lambda s: s == split, input_columns="split")
    for r in ds:
        yield row_to_study(r)
