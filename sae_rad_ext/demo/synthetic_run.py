"""A small synthetic interpretation run for demos and tests of the publishers.

Statistics, examples and explanations here are made up (clearly labelled ``synthetic`` in the run's
metadata); real ones come from ``sae_rad_ext.interpret``. The radiograph is the real adult PA chest
radiograph that ``pydicom-data`` ships (``RG1_UNCR.dcm``) when installed, else a drawn phantom.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sae_rad_ext.records import (
    ConceptScore,
    Explanation,
    FeatureExample,
    InterpretationRun,
    QuantileGroup,
    records_from_sae,
)

if TYPE_CHECKING:
    from sae_lens import SAE

    from sae_rad_ext.protocols import Unembedding

CONCEPTS = ["pleural_effusion", "cardiomegaly", "pacemaker", "pneumothorax", "lung_opacity", "support_lines_tubes"]
PHRASES = {
    "pleural_effusion": ["Small", " left", " pleural", " effusion", "."],
    "cardiomegaly": ["The", " heart", " is", " enlarged", "."],
    "pacemaker": ["Left", " chest", " pacemaker", " in", " place", "."],
    "pneumothorax": ["No", " pneumothorax", "."],
    "lung_opacity": ["Right", " basilar", " opacity", "."],
    "support_lines_tubes": ["ET", " tube", " terminates", " above", " carina", "."],
}
# where on a 37x37 grid each concept sits (row, col)
SPOTS = {
    "pleural_effusion": (30, 27),
    "cardiomegaly": (22, 20),
    "pacemaker": (8, 28),
    "pneumothorax": (6, 8),
    "lung_opacity": (28, 9),
    "support_lines_tubes": (10, 18),
}


def demo_radiograph(size: int = 256) -> np.ndarray:
    """A chest radiograph as ``uint8 [size, size]``: pydicom-data's RG1_UNCR.dcm, else a drawn phantom."""
    try:
        import pydicom
        from PIL import Image
        from pydicom.data import get_testdata_file

        path = get_testdata_file("RG1_UNCR.dcm")
        if path is None:
            raise FileNotFoundError("RG1_UNCR.dcm")
        a = pydicom.dcmread(path).pixel_array.astype(np.float32)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1.0) * 255
        h, w = a.shape
        s = min(h, w)
        a = a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        return np.asarray(Image.fromarray(a.astype(np.uint8)).resize((size, size), Image.BILINEAR))
    except Exception:  # pragma: no cover - depends on the optional test data package
        y, x = np.mgrid[0:size, 0:size] / size
        img = 0.25 + 0.0 * x
        for cx in (0.32, 0.68):
            img -= 0.2 * (((x - cx) / 0.17) ** 2 + ((y - 0.5) / 0.32) ** 2 < 1)
        img += 0.3 * (((x - 0.55) / 0.13) ** 2 + ((y - 0.62) / 0.12) ** 2 < 1)
        return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _blob(r: int, c: int, grid: int = 37, sigma: float = 3.0, peak: float = 1.0) -> list[list[float]]:
    y, x = np.mgrid[0:grid, 0:grid]
    return (peak * np.exp(-((y - r) ** 2 + (x - c) ** 2) / (2 * sigma**2))).round(4).tolist()


def _steering_plot(path: Path, concept: str) -> None:
    """A small made-up steering figure (strength vs. how often the generated report mentions ``concept``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strengths = np.linspace(-8, 8, 9)
    fig, ax = plt.subplots(figsize=(4, 2.4), dpi=80)
    ax.plot(strengths, 1 / (1 + np.exp(-(strengths - 1) / 1.5)), marker="o")
    ax.set_xlabel("steering strength (synthetic)")
    ax.set_ylabel(f"P(report mentions\n{concept})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def demo_run(
    sae: SAE[Any], out_dir: str | Path, model: Unembedding | None = None, n_features: int = 12, seed: int = 0
) -> InterpretationRun:
    """Weights-only records of ``sae`` (first ``n_features`` latents) filled with synthetic statistics,
    image/text examples, explanations and concept scores; saved to ``out_dir`` and returned."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "radiograph.npy", demo_radiograph())
    run = records_from_sae(sae, model, features=list(range(min(n_features, sae.cfg.d_sae))), with_vectors=True)
    for r in run.records:
        concept = CONCEPTS[r.index % len(CONCEPTS)]
        rr, cc = SPOTS[concept]
        peak = float(rng.uniform(3, 9))
        r.frac_nonzero = float(10 ** rng.uniform(-3.5, -1))
        r.max_activation = peak
        r.mean_activation = peak / 3
        counts, edges = np.histogram(rng.gamma(2.0, peak / 6, size=400).clip(0, peak), bins=20)
        r.hist_edges, r.hist_counts = edges.tolist(), counts.astype(float).tolist()
        r.role_frequency = {"image": r.frac_nonzero * 0.7, "image:frontal": r.frac_nonzero * 0.6, "report": r.frac_nonzero * 0.3}
        for j in range(3):
            v = peak * (1 - 0.15 * j)
            words = PHRASES[concept]
            tokens = [f"<frontal r{rr:02d} c{cc + k:02d}>" for k in range(-1, 2)] + words
            values = [v * 0.5, v, v * 0.6] + [v * 0.8 if w.strip() in concept.replace("_", " ") else 0.0 for w in words]
            r.top_examples.append(
                FeatureExample(
                    study_id=f"phantom-{seed}-{r.index * 10 + j}",
                    tokens=tokens,
                    values=[round(x, 4) for x in values],
                    qualifying_token_index=1,
                    image_path="radiograph.npy",
                    patch_map=_blob(rr + j, cc - j, peak=v),
                    view="frontal",
                    role="image",
                )
            )
        r.quantile_groups = [
            QuantileGroup(
                bin_min=0.0,
                bin_max=peak / 2,
                bin_contains=0.8,
                examples=[FeatureExample(f"phantom-{seed}-q{r.index}", ["No", " acute", " findings", "."], [0.0, peak / 4, 0.0, 0.0], 1)],
            )
        ]
        f1 = float(rng.uniform(0.55, 0.98))
        r.explanations = [
            Explanation(
                text=f"{concept.replace('_', ' ')} (image region around row {rr}, col {cc})",
                method="synthetic-demo",
                scores={"detection_f1": round(f1, 3), "detection_f1_shuffled": round(float(rng.uniform(0.4, 0.55)), 3)},
            )
        ]
        r.concepts = [
            ConceptScore(concept, f1=round(f1, 3), auroc=round(min(1.0, f1 + 0.05), 3), precision=round(f1, 3), recall=round(f1, 3), iou=round(f1 * 0.6, 3), positions="image"),
            ConceptScore(CONCEPTS[(r.index + 1) % len(CONCEPTS)], f1=0.2, auroc=0.55, positions="image"),
        ]
    _steering_plot(out / "steering_f0.png", CONCEPTS[0])
    run.records[0].steering_plot = "steering_f0.png"
    run.meta.update({"synthetic": True, "dataset": "synthetic demo (made-up statistics)", "n_studies": 64, "context_size": 128, "positions": "maira2_sae_paper"})
    run.save(out)
    return run
