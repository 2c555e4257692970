"""Studies in: the Study value, readers, phantoms, the finding labeler."""

from sae_rad_ext.data.base import StudyReader
from sae_rad_ext.data.dicom import read_dicom
from sae_rad_ext.data.dicom_reader import DicomReader
from sae_rad_ext.data.hf import HFDatasetReader
from sae_rad_ext.data.images import load_image
from sae_rad_ext.data.manifest import ManifestReader
from sae_rad_ext.data.mimic import MimicCxrReader
from sae_rad_ext.data.read_stats import ReadStats, SourceError, StudyReadError
from sae_rad_ext.data.readers import count_studies, detect_source, open_studies, register_source
from sae_rad_ext.data.reports import parse_report_sections
from sae_rad_ext.data.study import FINDINGS, Study

__all__ = [
    "FINDINGS",
    "Study",
    # readers (studies in)
    "DicomReader",
    "HFDatasetReader",
    "ManifestReader",
    "MimicCxrReader",
    "ReadStats",
    "SourceError",
    "StudyReadError",
    "StudyReader",
    "count_studies",
    "detect_source",
    "load_image",
    "open_studies",
    "parse_report_sections",
    "read_dicom",
    "register_source",
]
