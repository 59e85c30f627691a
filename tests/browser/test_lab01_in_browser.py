"""Lab 01 in a real browser: JupyterLab + headless Chromium (Playwright), every cell run.

Asserts from the DOM that the VM panel's buttons and a plotly chart rendered and that no cell raised;
saves a screenshot to ``test-artifacts/lab01.png``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.browser.jupyterlab import CHROMIUM, CHROMIUM_ARGS, error_outputs, jupyterlab, run_all_cells

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.qemu]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


def lab01() -> Path:
    found = sorted((REPO / "labs").glob("01-*.ipynb"))
    assert found, "labs/01-*.ipynb is missing"
    return found[0]


@pytest.fixture(scope="module")
def playwright_api():  # type: ignore[no-untyped-def]
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (setup.sh test does)")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (setup.sh test installs it)")
    with sync_api.sync_playwright() as api:
        yield api


def test_lab01_runs_in_jupyterlab_with_vm_panel_and_plotly_chart(playwright_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    workdir = tmp_path / "labs"
    workdir.mkdir()
    notebook = shutil.copy(lab01(), workdir)
    ARTIFACTS.mkdir(exist_ok=True)
    with jupyterlab(workdir, tmp_path / "jupyterlab.log") as server:
        browser = playwright_api.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                run_all_cells(page, server, Path(notebook).name, timeout_s=240)
                errors = error_outputs(page)
                charts = page.locator(".js-plotly-plot").count()
                labels = page.eval_on_selector_all(".jupyter-widgets button",
                                                   "els => els.map(e => e.textContent.trim())")
            finally:
                if page.locator(".js-plotly-plot").count():  # the artefact shows the VM panel, not the last cell
                    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
                page.screenshot(path=str(ARTIFACTS / "lab01.png"), full_page=False)
        finally:
            browser.close()
    assert errors == [], errors
    assert {"Start", "Pause", "Resume", "Stop"} <= {label.title() for label in labels}, labels
    assert charts >= 1, "no plotly chart rendered"
