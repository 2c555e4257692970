"""MAIRA-2 prompts, image preprocessing, per-position roles and grounded output, offline in seconds.

    python examples/prompts_and_roles.py

Builds a findings prompt for a study with frontal, lateral and prior images (a real chest radiograph from
``pydicom-data`` when it is installed, otherwise a synthetic one), prints the prompt and a summary of the
role table, caches the residual stream of the tiny MAIRA-2 and selects positions by meaning, then asks for
a grounded report and parses the boxes. For the real model:
``HookedMaira2.from_pretrained("/path/to/maira-2", device="cuda", dtype=torch.bfloat16)`` — the same
processor then gives 1369 image positions per 518-px image.
"""

from collections import Counter

import numpy as np
import torch
from sae_rad_ext.adapters import HookedMaira2, Maira2Processor, Role, parse_grounded

from sae_rad_ext.data.study import Study


def radiograph() -> np.ndarray:
    try:
        import pydicom
        from pydicom.data import get_testdata_file

        return pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")).pixel_array  # 15-bit PA chest radiograph
    except Exception:  # pydicom-data not installed: a smooth synthetic image
        y, x = np.mgrid[0:600, 0:500]
        return (np.sin(x / 40.0) * np.cos(y / 55.0) * 1000 + 2000).astype(np.uint16)


def main() -> None:
    model = HookedMaira2.tiny(seed=0)
    proc = Maira2Processor.from_model_config(model.model.config, model.tokenizer)
    img = radiograph()
    study = Study("demo", img, lateral=img, prior_frontal=img, prior_report="No pleural effusion.",
                  indication="Dyspnea.", technique=None, comparison="Prior study.",
                  findings="Small left pleural effusion. Stable cardiomegaly.")
    print(proc.prompt_text(study), "\n")

    batch = proc.build([study])  # teacher-forced report + EOS
    pixels = batch.pixel_values
    print(f"input_ids {tuple(batch.input_ids.shape)}, pixel_values {tuple(pixels.shape)} "
          f"(mean {pixels.mean():.3f}, std {pixels.std():.3f}), {proc.tokens_per_image} tokens per image")
    counts = Counter(Role(int(r)).name for r in batch.roles.role[0])
    print("positions per role:", dict(counts))
    print("first patch of the lateral image at position",
          int((batch.roles.mask("image:lateral")[0]).nonzero()[0]), "-", batch.roles.describe(0, int(
              (batch.roles.mask("image:lateral")[0]).nonzero()[0])))

    hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    _, cache = model.run_with_cache(batch.input_ids, pixel_values=batch.pixel_values,
                                    attention_mask=batch.attention_mask, names_filter=hook)
    for sel in ("maira2_sae_paper", "report", "image:frontal", "section:indication"):
        acts = cache[hook][batch.roles.mask(sel)]  # [n_selected, d_model]
        print(f"{sel:>20}: {tuple(acts.shape)}")

    gen = proc.build([study], "grounded_reporting", with_report=False)
    with torch.no_grad():
        out = model.generate(gen.input_ids, pixel_values=gen.pixel_values, attention_mask=gen.attention_mask,
                             max_new_tokens=12)
    print("generated (random tiny weights):", proc.decode_generated(gen, out))
    print("roles of prompt + generated:", tuple(proc.roles_for_generated(gen, out).shape))
    print(parse_grounded("<obj>Small left pleural effusion.<box><x60><y55><x85><y80></box></obj>"
                         "<obj>Stable cardiomegaly.</obj>"))


if __name__ == "__main__":
    main()
