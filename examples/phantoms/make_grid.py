"""Regenerate examples/phantoms/grid.png: normal + each finding, frontal + lateral, mask outlines in colour."""

import numpy as np
from PIL import Image
from scipy import ndimage

from sae_rad_ext.data.phantom.generator import FINDINGS, make_study

COLORS = {"cardiomegaly": (255, 80, 80), "pleural_effusion": (80, 160, 255), "pneumothorax": (255, 220, 0),
          "lung_opacity": (80, 255, 80), "pacemaker": (255, 0, 255), "support_lines_tubes": (0, 255, 255)}


def overlay(img, masks, keys):
    rgb = np.repeat(img[..., None], 3, 2).astype(np.uint8)
    for k in keys:
        m = masks[k].astype(bool)
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = COLORS[k]
    return rgb


rows = []
for i, key in enumerate(["normal", *FINDINGS]):
    probs = dict.fromkeys(FINDINGS, 0.0)
    if key != "normal":
        probs[key] = 1.0
    s = make_study(2026, i, image_size=160, lateral_prob=1.0, prior_prob=0.0, finding_probs=probs)
    j = i
    while s.lateral is None:  # AP studies have no lateral; take the next index
        j += 100
        s = make_study(2026, j, image_size=160, lateral_prob=1.0, prior_prob=0.0, finding_probs=probs)
    keys = [] if key == "normal" else [key]
    m = s.metadata["masks"]
    rows.append(np.concatenate([np.repeat(s.frontal[..., None], 3, 2), overlay(s.frontal, m["frontal"], keys),
                                np.repeat(s.lateral[..., None], 3, 2), overlay(s.lateral, m["lateral"], keys)], 1))
    print(key, "|", s.findings)
grid = np.concatenate(rows, 0)
Image.fromarray(grid).save("examples/phantoms/grid.png", optimize=True)
