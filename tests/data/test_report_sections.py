"""parse_report_sections on report texts written for these tests (MIMIC-CXR-like, not copied)."""

from sae_rad_ext.data.reports import parse_report_sections, study_text_fields

STANDARD = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old woman with cough and fever for three days  // evaluate for
 pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 The heart size is at the upper limits of normal.  There is a small right pleural
 effusion with adjacent basilar opacity.  No pneumothorax.  The left lung is
 clear.

 IMPRESSION:

 Small right pleural effusion with adjacent opacity, atelectasis versus
 early pneumonia.
"""

WET_READ = """WET READ: ___ ___ 9:42 PM
  No acute process.
 ______________________________________________________________________________
                                 FINAL REPORT
 HISTORY:  Chest pain.

 COMPARISON:  Radiograph from ___.

 Findings:  Lungs are well expanded and clear.  Cardiomediastinal silhouette is
 normal.  No effusion.
 Impression:  No acute cardiopulmonary abnormality.
"""

NO_FINDINGS = """                                 FINAL REPORT
 PORTABLE AP CHEST RADIOGRAPH

 CLINICAL INFORMATION:  Intubated patient, line placement.

 IMPRESSION:  Endotracheal tube terminates 4 cm above the carina.  Right IJ
 catheter tip in the mid SVC.  No pneumothorax.
"""

COMBINED_INLINE = """ REASON FOR EXAMINATION:  Follow-up effusion.
 COMPARISONS:  None.
 FINDINGS AND IMPRESSION:  Moderate left effusion, slightly larger.  Mild
 cardiomegaly.
"""

RUN_ON = """ INDICATION: Dyspnea. FINDINGS: Mild pulmonary edema.  No focal consolidation.  IMPRESSION: Mild edema.
"""


def test_standard_report_sections():
    s = parse_report_sections(STANDARD)
    assert s["examination"] == "CHEST (PA AND LAT)"
    assert s["indication"] == "___ year old woman with cough and fever for three days // evaluate for pneumonia"
    assert s["technique"] == "Chest PA and lateral"
    assert s["comparison"] == "___"
    assert s["findings"].startswith("The heart size is at the upper limits of normal.")
    assert s["findings"].endswith("The left lung is clear.")
    assert "\n" not in s["findings"] and "  " not in s["findings"]
    assert s["impression"] == "Small right pleural effusion with adjacent opacity, atelectasis versus early pneumonia."
    assert "FINAL REPORT" not in " ".join(s.values())


def test_wet_read_title_case_headers_and_history_as_indication():
    s = parse_report_sections(WET_READ)
    assert s["wet_read"].startswith("___ ___ 9:42 PM No acute process.")
    assert "____" not in s["wet_read"]
    assert s["history"] == "Chest pain."
    assert s["findings"] == "Lungs are well expanded and clear. Cardiomediastinal silhouette is normal. No effusion."
    assert s["impression"] == "No acute cardiopulmonary abnormality."
    fields = study_text_fields(s)
    assert fields["indication"] == "Chest pain." and fields["comparison"] == "Radiograph from ___."


def test_report_without_findings():
    s = parse_report_sections(NO_FINDINGS)
    assert "findings" not in s
    assert s["preamble"] == "PORTABLE AP CHEST RADIOGRAPH"
    assert s["clinical_information"] == "Intubated patient, line placement."
    assert s["impression"].endswith("No pneumothorax.")
    assert study_text_fields(s)["indication"] == "Intubated patient, line placement."


def test_combined_and_run_on_sections():
    s = parse_report_sections(COMBINED_INLINE)
    assert s["indication"] == "Follow-up effusion." and s["comparison"] == "None."
    assert s["findings"] == s["impression"] == "Moderate left effusion, slightly larger. Mild cardiomegaly."
    r = parse_report_sections(RUN_ON)
    assert r == {"indication": "Dyspnea.", "findings": "Mild pulmonary edema. No focal consolidation.",
                 "impression": "Mild edema."}


def test_keep_newlines_and_lowercase_words_inside_text():
    text = " FINDINGS:\n Lungs clear.\n\n The findings: none acute in the mediastinum.\n IMPRESSION: Normal.\n"
    s = parse_report_sections(text, keep_newlines=True)
    # "The findings:" mid-line is not a header; paragraphs kept as lines
    assert s["findings"] == "Lungs clear.\nThe findings: none acute in the mediastinum."
    assert s["impression"] == "Normal."
    assert parse_report_sections("") == {}
