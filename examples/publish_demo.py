"""Publish an SAE offline: SAELens release (+ load it back), Neuronpedia files, HTML dashboard.

    python examples/publish_demo.py --out runs/publish_demo [--sae PATH] [--screenshot examples/dashboard.png]

Without ``--sae`` a small stock SAELens SAE stands in. The interpretation data are the synthetic demo
run (``sae_rad_ext.demo.synthetic_run``: made-up statistics on a real chest radiograph from pydicom-data) until
``sae-rad interpret`` output is passed with ``sae-rad export --interpretation``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig

from sae_rad_ext.demo.synthetic_run import demo_run
from sae_rad_ext.publish import (
    NeuronpediaSettings,
    build_site,
    register_release,
    write_neuronpedia,
    write_release,
)


def screenshot(index: Path, path: Path, width: int = 900, height: int = 560) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH: apt-get install -y chromium")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=flags)
        page = b.new_page(viewport={"width": width, "height": height})
        page.goto(index.as_uri())
        page.screenshot(path=str(path.with_suffix(".index.png")), clip={"x": 0, "y": 0, "width": width, "height": 330})
        page.goto((index.parent / "features" / "0.html").as_uri())
        page.locator("section:has(.thumbs)").screenshot(path=str(path.with_suffix(".thumbs.png")))
        b.close()
    from PIL import Image

    top, bottom = Image.open(path.with_suffix(".index.png")), Image.open(path.with_suffix(".thumbs.png"))
    out = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), "white")
    out.paste(top, (0, 0))
    out.paste(bottom, (16, top.height))
    out.convert("P", palette=Image.ADAPTIVE, colors=160).save(path, optimize=True)
    path.with_suffix(".index.png").unlink()
    path.with_suffix(".thumbs.png").unlink()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/publish_demo"))
    ap.add_argument("--sae", type=Path, default=None, help="SAELens SAE folder (default: a random stock SAE)")
    ap.add_argument("--screenshot", type=Path, default=None)
    args = ap.parse_args()

    if args.sae:
        sae = SAE.load_from_disk(str(args.sae))
    else:
        torch.manual_seed(0)
        sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=256))
        sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name = "tiny-maira2", "blocks.1.hook_resid_post"
    run = demo_run(sae, args.out / "interpretation", n_features=16)
    rel = write_release(sae, args.out / "release", release="sae-rad-demo", sae_id="layer1",
                        positions="maira2_sae_paper", dataset_path="synthetic demo", context_size=128)
    register_release("sae-rad-demo", args.out / "release")
    loaded = SAE.from_pretrained("sae-rad-demo", "layer1")
    x = torch.randn(8, sae.cfg.d_in)
    with torch.no_grad():
        same = torch.equal(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)))
    print(f"release {rel.folder}: SAE.from_pretrained round trip identical = {same}")
    res = write_neuronpedia(run, args.out / "neuronpedia", NeuronpediaSettings.from_run(run))
    print(f"neuronpedia: {[p.name for p in res['dashboard']]}, export {res['export']}")
    index = build_site(run, args.out / "html", title="sae-rad-ext demo dashboard (synthetic statistics)")
    print(f"dashboard: {index}")
    if args.screenshot:
        screenshot(index, args.screenshot)
        print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
