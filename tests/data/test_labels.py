"""Finding labeler: hand-written real-style sentences, and agreement with planted phantom truth."""

import pytest

from sae_rad_ext.data.labels import binarize, label_report
from sae_rad_ext.evaluation.metrics import f1_by_key

CASES = [
    ("No pleural effusion or pneumothorax.", {"pleural_effusion": 0, "pneumothorax": 0}),
    ("Pacemaker leads unchanged.", {"pacemaker": 1}),
    ("Cannot exclude small left effusion.", {"pleural_effusion": -1}),
    ("Resolution of the previously seen right pneumothorax.", {"pneumothorax": 0}),
    ("Small bilateral pleural effusions, right greater than left.", {"pleural_effusion": 1}),
    ("No change in the moderate right pleural effusion.", {"pleural_effusion": 1}),
    ("No significant change in the size of the left pneumothorax.", {"pneumothorax": 1}),
    ("The heart is mildly enlarged.", {"cardiomegaly": 1}),
    ("Heart size is normal.", {"cardiomegaly": 0}),
    ("Heart size is top normal.", {"cardiomegaly": 0}),
    ("Borderline cardiomegaly.", {"cardiomegaly": -1}),
    ("Moderate cardiomegaly is stable.", {"cardiomegaly": 1}),
    ("The cardiac silhouette is not enlarged.", {"cardiomegaly": 0}),
    ("Cardiomediastinal silhouette is within normal limits.", {"cardiomegaly": 0}),
    ("Lungs are clear.", {"lung_opacity": 0}),
    ("The lungs are well expanded and clear.", {"lung_opacity": 0}),
    ("Patchy opacity at the left base may reflect atelectasis.", {"lung_opacity": 1}),
    ("Right lower lobe consolidation concerning for pneumonia.", {"lung_opacity": 1}),
    ("Possible early right lower lobe pneumonia.", {"lung_opacity": -1}),
    ("No focal consolidation to suggest pneumonia.", {"lung_opacity": 0}),
    ("No new focal opacity.", {"lung_opacity": 0}),
    ("Left retrocardiac opacity, atelectasis versus pneumonia.", {"lung_opacity": 1}),
    ("Blunting of the right costophrenic angle may represent a small effusion.", {"pleural_effusion": -1}),
    ("Blunting of the left costophrenic angle.", {"pleural_effusion": 1}),
    ("The costophrenic angles are sharp.", {"pleural_effusion": 0}),
    ("A tiny apical pneumothorax cannot be excluded.", {"pneumothorax": -1}),
    ("Small right apical pneumothorax with a visible pleural line.", {"pneumothorax": 1}),
    ("The left pneumothorax has resolved.", {"pneumothorax": 0}),
    ("Interval decrease in the right pneumothorax, now small.", {"pneumothorax": 1}),
    ("No pneumothorax, but there is a small left effusion.", {"pneumothorax": 0, "pleural_effusion": 1}),
    ("No evidence of pneumothorax, effusion, or consolidation.",
     {"pneumothorax": 0, "pleural_effusion": 0, "lung_opacity": 0}),
    ("Left-sided dual-chamber pacemaker with leads in the right atrium and right ventricle.", {"pacemaker": 1}),
    ("Right chest wall ICD with a single lead in the right ventricle.", {"pacemaker": 1}),
    ("Interval removal of the pacemaker generator.", {"pacemaker": 0}),
    ("Endotracheal tube terminates 4 cm above the carina.", {"support_lines_tubes": 1}),
    ("The ET tube has been removed.", {"support_lines_tubes": 0}),
    ("Enteric tube courses below the diaphragm, tip not seen.", {"support_lines_tubes": 1}),
    ("Right IJ central venous catheter tip at the cavoatrial junction.", {"support_lines_tubes": 1}),
    ("Left PICC line terminates in the mid SVC.", {"support_lines_tubes": 1}),
    ("Interval removal of the endotracheal and nasogastric tubes.", {"support_lines_tubes": 0}),
    ("Interval removal of the ET tube; the NG tube remains in the stomach.", {"support_lines_tubes": 1}),
    ("Questionable small left pleural effusion.", {"pleural_effusion": -1}),
    ("Probable small right effusion.", {"pleural_effusion": -1}),
    ("There is no pericardial effusion.", {"pleural_effusion": None}),
    ("Unchanged moderate left pleural effusion with adjacent compressive atelectasis.",
     {"pleural_effusion": 1, "lung_opacity": 1}),
    ("Previously noted right upper lobe opacity has cleared.", {"lung_opacity": 0}),
    ("Pulmonary vascularity is normal. No acute osseous abnormality.",
     {f: None for f in ("cardiomegaly", "pleural_effusion", "pneumothorax", "lung_opacity")}),
    ("Pacemaker leads are in unchanged position. No focal consolidation.", {"pacemaker": 1, "lung_opacity": 0}),
    ("The visceral pleural line is displaced from the chest wall, consistent with pneumothorax.", {"pneumothorax": 1}),
    ("No pneumothorax is seen following line placement.", {"pneumothorax": 0}),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_sentences(text, expected):
    got = label_report(text)
    for k, v in expected.items():
        assert got[k] == v, (text, k, got)


def test_no_finding():
    assert label_report("Lungs are clear. No effusion. Pacemaker in place.")["no_finding"] == 1
    assert label_report("Possible small left effusion.")["no_finding"] == 0
    assert label_report("")["no_finding"] == 1


def test_labeler_on_phantom_reports_f1():
    """Reports written from planted truth (no rendering needed): labeler F1 ≥ 0.98 per finding."""
    from sae_rad_ext.data.phantom import generator as ph
    from sae_rad_ext.data.phantom.anatomy import sample_patient
    from sae_rad_ext.data.phantom.reports import write_report

    preds, truths, exact = [], [], 0
    n = 800
    for i in range(n):
        rng = ph._rng(7, i, 0)
        p = sample_patient(ph._rng(7, i, 1), "x")
        st = ph.sample_state(rng, p, ph.DEFAULT_FINDING_PROBS)
        pst = ph.prior_state(rng, p, st, ph.DEFAULT_FINDING_PROBS) if rng.random() < 0.4 else None
        t = ph.truth_summary(p, st, 0.6 if st.cardiomegaly else 0.45)
        pt = ph.truth_summary(p, pst, 0.5) if pst else None
        rep = write_report(t, pt, ph._rng(7, i, 2), views=["PA"], age=60, sex="F", prior_date="2150-01-01" if pt else None)
        lab = label_report(rep["findings"] + " " + rep["impression"])
        exact += lab == rep["report_labels"]
        truth = {k: int(t["severity"][k] > 0) for k in ph.FINDINGS}
        truth["no_finding"] = int(not any(truth[k] for k in ("cardiomegaly", "pleural_effusion", "pneumothorax", "lung_opacity")))
        preds.append(binarize(lab))
        truths.append(truth)
    f1 = f1_by_key(preds, truths, keys=[*ph.FINDINGS, "no_finding"])
    assert min(f1.values()) >= 0.98, f1
    assert exact / n >= 0.98
