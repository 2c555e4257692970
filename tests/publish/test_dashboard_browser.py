"""The static dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Skips with a reason when Chromium or Playwright is missing (``.ci/run`` installs Chromium).
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from sae_rad_ext.demo.synthetic_run import demo_run
from sae_rad_ext.publish import build_site

CHROMIUM = os.environ.get("SAE_RAD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip("Chromium not installed: apt-get install -y chromium (.ci/run does this)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the [test] extra has it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def test_dashboard_in_chromium(browser, tmp_path):
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=64))
    sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name = "tiny-maira2", "blocks.1.hook_resid_post"
    run = demo_run(sae, tmp_path / "run", n_features=12)
    run.records[2].explanations[0].text = "<script>window.__pwned = 1</script> pacemaker"
    index = build_site(run, tmp_path / "site")

    page = browser.new_page(viewport={"width": 1000, "height": 800})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(index.as_uri())
    rows = page.locator("tr.feat")
    assert rows.count() == 12
    assert page.locator("#count").inner_text() == "12 of 12 features"
    page.fill("#search", "pacemaker")
    visible = page.locator("tr.feat:visible")
    assert 0 < visible.count() < 12
    assert all("pacemaker" in visible.nth(i).inner_text().lower() for i in range(visible.count()))
    page.fill("#search", "")
    page.select_option("#sort", "f1")
    f1s = [float(x) for x in page.eval_on_selector_all("tr.feat", "rs => rs.map(r => r.dataset.f1)")]
    assert f1s == sorted(f1s, reverse=True)
    assert page.evaluate("window.__pwned") is None
    assert "<script>window.__pwned" in page.locator("tr.feat[data-index='2']").inner_text()
    page.screenshot(path=str(tmp_path / "index.png"))

    page.goto((tmp_path / "site" / "features" / "2.html").as_uri())
    img = page.locator("img.heatmap").first
    img.wait_for()
    assert page.evaluate("img => img.complete && img.naturalWidth", img.element_handle()) > 0
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#hist svg rect").count() > 0
    page.screenshot(path=str(tmp_path / "feature.png"), full_page=True)
    page.goto((tmp_path / "site" / "features" / "0.html").as_uri())
    steer = page.locator("img[alt='steering plot']")
    steer.wait_for()
    assert page.evaluate("img => img.complete && img.naturalWidth", steer.element_handle()) > 0
    assert not errors, errors
    assert (tmp_path / "index.png").stat().st_size > 0 and (tmp_path / "feature.png").stat().st_size > 0
    page.close()
