"""Small study sets for the activations / training / cache tests (random pixels, varied prompts)."""

from __future__ import annotations

import numpy as np

from sae_rad_ext.data.study import Study


def random_studies(n: int = 6, seed: int = 0, size: int = 64) -> list[Study]:
    """Studies with 1, 2 or 3 images, some missing prompt sections, reports of different lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = lambda w=size + 8 * (i % 3): rng.integers(0, 255, (size, w), dtype=np.uint8)  # noqa: E731
        out.append(
            Study(
                study_id=f"r{seed}-{i}",
                frontal=img(),
                lateral=img() if i % 2 else None,
                prior_frontal=img() if i % 3 == 2 else None,
                prior_report="Mild cardiomegaly." if i % 3 == 2 else None,
                indication="Cough." if i % 2 == 0 else None,
                technique="PA and lateral." if i % 2 else None,
                findings=" ".join(["The lungs are clear."] * (1 + i % 3)),
            )
        )
    return out
