"""List the studies a source yields, and what was skipped: ``python examples/read_studies.py [SOURCE] [options]``.

SOURCE is anything ``open_studies`` accepts (MIMIC-CXR-JPG root, DICOM folder/file, datasets folder,
manifest, phantom folder). Without one, the real chest radiograph ``RG1_UNCR.dcm`` from pydicom-data is read.

    python examples/read_studies.py /data/mimic-cxr-jpg/2.1.0 --split validate --skip --max 20 --prior
"""

from __future__ import annotations

import argparse

from sae_rad_ext.data import count_studies, open_studies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", help="study source (default: pydicom-data's RG1_UNCR.dcm)")
    ap.add_argument("--split", help="MIMIC / datasets split")
    ap.add_argument("--skip", action="store_true", help="skip and count bad studies instead of stopping")
    ap.add_argument("--max", type=int, default=10, help="studies to read (default 10)")
    ap.add_argument("--prior", action="store_true", help="MIMIC: add each study's prior frontal + report")
    ap.add_argument("--no-findings-ok", action="store_true", help="keep studies without a FINDINGS section")
    args = ap.parse_args()

    source = args.source
    kw: dict = {"on_error": "skip" if args.skip else "raise", "max_studies": args.max}
    if source is None:
        from pydicom.data import get_testdata_file

        source = get_testdata_file("RG1_UNCR.dcm")
        kw["require_findings"] = False
    if args.split:
        kw["split"] = args.split
    if args.prior:
        kw["with_prior"] = True
    if args.no_findings_ok:
        kw["require_findings"] = False

    print(f"{source}: up to {count_studies(source, **kw)} studies")
    reader = open_studies(source, **kw)
    for s in reader:
        views = "+".join(v for v, im in (("F", s.frontal), ("L", s.lateral), ("P", s.prior_frontal)) if im is not None)
        shape = "x".join(map(str, s.frontal.shape))
        text = (s.findings or s.impression or "").replace("\n", " ")
        print(f"{s.study_id:>24}  {views:<6} {shape:>10}  {text[:70]}")
    print(reader.stats.summary())


if __name__ == "__main__":
    main()
