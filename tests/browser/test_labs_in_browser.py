"""What a student sees in JupyterLab, in headless Chromium (Debian's) driven by Playwright.

* The VM panel, clicked: Start → starting → running, samples arriving as chart markers, Pause → the paused
  stretch shaded, Resume, Stop → stopped with no button left enabled; the console tail labelled. Also how long
  the first live chart takes to appear (recorded in ``test-artifacts/browser/timings.json``, not asserted:
  speed targets live in ``bench/``).
* Labs 01, 04 and 07 run top to bottom (Run All), then saved: no cell error, no JavaScript error in the
  console, the saved notebook ≤ 1 MB, and what each lab's live parts leave on screen (lab 01's panel frozen in
  ``stopped``, lab 07's migration view replaced by a static chart with whole-number rounds, lab 04's charts).
* Every lab's mermaid diagrams render with no two edge labels overlapping.

Screenshots of every stage are kept in ``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.browser.jupyterlab import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LabServer,
    error_outputs,
    jupyterlab,
    mermaid_label_overlaps,
    open_notebook,
    run_all_cells,
    save_notebook,
    wait_all_run,
    watch_js_errors,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.qemu]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
#: the issue's bound for a lab notebook saved after Run All
MAX_SAVED_BYTES = 1_000_000

PANEL_CELLS = [
    "import vlab\nfrom vlab.dashboards import VMPanel\n\nvm = vlab.VM(name='browser')",
    "panel = VMPanel(vm)\npanel.start_updates()\npanel",
]


def lab(number: str) -> Path:
    found = sorted((REPO / "labs").glob(f"{number}-*.ipynb"))
    assert found, f"labs/{number}-*.ipynb is missing"
    return found[0]


@pytest.fixture(scope="module")
def playwright_api() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (setup.sh test does)")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (setup.sh test installs it)")
    with sync_api.sync_playwright() as api:
        yield api


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser") / "labs"
    root.mkdir()
    for path in (REPO / "labs").glob("[0-9][0-9]-*.ipynb"):  # all of them for the diagrams; 01, 04, 07 are run
        shutil.copy(path, root)
    # lab 01 runs solved, as a student who answered it: the pause its panel must show is the student's own raw
    # QMP (q3), which an untouched copy does not send
    shutil.copy(REPO / "labs" / "source" / lab("01").name, root)
    nb: Any = nbformat  # nbformat's functions are untyped
    panel = nb.v4.new_notebook(cells=[nb.v4.new_code_cell(code) for code in PANEL_CELLS])
    panel.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.write(panel, root / "panel.ipynb")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[LabServer]:
    with jupyterlab(workdir, workdir.parent / "jupyterlab.log") as lab_server:
        yield lab_server


@pytest.fixture
def page(playwright_api: Any) -> Iterator[Any]:
    """A fresh browser (empty cache: plotly.js is loaded as on a student's first visit)."""
    browser = playwright_api.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield browser.new_page(viewport={"width": 1300, "height": 1000})
    finally:
        browser.close()


_CLIP = ("const r = el.getBoundingClientRect(); const top = Math.max(r.top, 0);"
         " return {x: Math.max(r.left, 0), y: top, width: Math.min(r.width, innerWidth),"
         " height: Math.max(1, Math.min(r.bottom, innerHeight) - top)};")


def shot(target: Any, name: str) -> None:
    """Screenshot of a static element (a diagram, a finished cell), scrolled into view and clipped."""
    box = target.evaluate("el => { el.scrollIntoView({block: 'start'}); " + _CLIP + " }")
    target.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), clip=box, timeout=90_000)


def shot_cell(page: Any, index: int, name: str) -> None:
    """Screenshot of code cell *index* while its output is live. Only page-level calls: Playwright's element
    operations wait for the element's frames to settle, which a chart re-rendered every second may not let
    happen on a loaded machine."""
    box = page.evaluate("i => { const el = document.querySelectorAll('.jp-Notebook .jp-CodeCell')[i];"
                        " el.scrollIntoView({block: 'start'}); " + _CLIP + " }", index)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), clip=box, timeout=90_000)


def record_timing(name: str, seconds: float) -> None:
    path = ARTIFACTS / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[name] = round(seconds, 3)
    path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------- the VM panel, clicked


class PanelView:
    """The VM panel as the page shows it, in the output of code cell *index*. Reads are single JavaScript
    calls on the current DOM: a live chart is re-rendered every second, so element handles go stale."""

    def __init__(self, page: Any, index: int) -> None:
        self.page = page
        self.index = index
        self.cell = page.locator(".jp-Notebook .jp-CodeCell").nth(index)

    def _read(self, body: str) -> Any:
        return self.page.evaluate(
            f"() => {{ const cell = document.querySelectorAll('.jp-Notebook .jp-CodeCell')[{self.index}];"
            f" {body} }}")

    def state(self) -> str:
        heading = self._read("const h = [...cell.querySelectorAll('.widget-html')]"
                             ".find(e => e.textContent.includes('state:')); return h ? h.textContent : '';")
        match = re.search(r"state:\s*(\w+)", heading)
        return match.group(1) if match else heading

    def wait_state(self, wanted: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.state() != wanted:
            assert time.monotonic() < deadline, f"the panel still says {self.state()!r}, not {wanted!r}"
            time.sleep(0.2)

    def enabled(self) -> set[str]:
        labels: list[str] = self._read("return [...cell.querySelectorAll('button.widget-button')]"
                                       ".filter(b => !b.disabled).map(b => b.textContent.trim());")
        return set(labels)

    def click(self, label: str) -> None:
        """Click the button labelled *label* (a DOM click: a disabled button ignores it, as for a mouse)."""
        assert label in self.enabled(), f"{label} is not enabled: {self.enabled()}"
        clicked = self.page.evaluate(
            "([i, label]) => { const cell = document.querySelectorAll('.jp-Notebook .jp-CodeCell')[i];"
            " const b = [...cell.querySelectorAll('button.widget-button')].find(b => b.textContent.trim() === label);"
            " if (!b) return false; b.click(); return true; }", [self.index, label])
        assert clicked, f"no button {label!r}"

    def points(self) -> int:
        """Markers drawn on the chart now (every trace)."""
        return int(self._read("return cell.querySelectorAll('.js-plotly-plot .scatterlayer path.point').length;"))

    def latest_sample(self) -> float:
        """The time (x) of the newest point on the chart, from the data plotly drew (-1: none yet)."""
        return float(self._read("const el = cell.querySelector('.js-plotly-plot');"
                                " return Math.max(-1, ...((el && el.data) || []).flatMap(t => t.x || []));"))

    def wait_newer_sample(self, than: float, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while (now := self.latest_sample()) <= than:
            assert time.monotonic() < deadline, f"no sample newer than {than} s on the chart within {timeout_s} s"
            time.sleep(0.2)
        return now

    def guest_behind(self) -> float:
        """The newest point of the guest-clock line plotly drew: seconds behind real time (-1: none yet)."""
        return float(self._read("const el = cell.querySelector('.js-plotly-plot');"
                                " const t = ((el && el.data) || [])"
                                "   .find(t => (t.name || '').startsWith('guest clock'));"
                                " return t && t.y && t.y.length ? t.y[t.y.length - 1] : -1;"))

    def text(self) -> str:
        """Everything the cell shows as text (its output's labels, console, heading)."""
        return str(self._read("return cell.innerText;"))

    def console(self) -> str:
        return str(self._read("const pre = cell.querySelector('.widget-html pre'); return pre ? pre.innerText : '';"))

    def annotations(self) -> list[str]:
        texts: list[str] = self._read("return [...cell.querySelectorAll('.js-plotly-plot .annotation-text')]"
                                      ".map(e => e.textContent.trim());")
        return texts


def code_cell_index(page: Any, text: str) -> int:
    """The index of the first code cell whose source contains *text*."""
    index: int = page.evaluate(
        "text => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')]"
        ".findIndex(c => c.querySelector('.jp-InputArea').textContent.includes(text))", text)
    assert index >= 0, f"no code cell with {text!r}"
    return index


def run_cell(page: Any, index: int) -> None:
    page.evaluate(f"() => {{ const nb = window.jupyterapp.shell.currentWidget.content;"
                  f" nb.activeCellIndex = {index}; }}")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")


def test_vm_panel_buttons_drive_a_real_vm_and_the_chart_fills_with_samples(page: Any, server: LabServer) -> None:
    js_errors = watch_js_errors(page)
    open_notebook(page, server, "panel.ipynb")
    page.evaluate("() => console.error('vlab: the watcher sees console errors')")  # the check can fail
    assert js_errors == ["console.error: vlab: the watcher sees console errors"]
    js_errors.clear()
    run_cell(page, 0)
    wait_all_cell(page, 0)
    clicked = time.monotonic()
    run_cell(page, 1)
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
    cell.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    record_timing("first live chart (s, from running the cell)", time.monotonic() - clicked)
    panel = PanelView(page, 1)
    panel.wait_state("created", 10)
    assert panel.enabled() == {"Start"}
    assert "Serial console of browser" in panel.text()
    shot_cell(page, 1, "panel-1-created")

    panel.click("Start")
    panel.wait_state("starting", 5)  # the click returns at once; the boot runs on the panel's worker thread
    deadline = time.monotonic() + 3
    while panel.enabled() and panel.state() == "starting":  # the buttons' update may reach the page after the
        assert time.monotonic() < deadline, panel.enabled()  # heading's (separate widget messages; CI saw it)
        time.sleep(0.1)
    panel.wait_state("running", 180)
    assert panel.enabled() == {"Pause", "Stop"}
    first = panel.wait_newer_sample(-1, 10)
    assert panel.points() >= 2  # markers, not just a line
    panel.wait_newer_sample(first, 10)  # samples keep arriving (drawn every second)
    assert "VLAB-READY" in panel.console() or "restored from a snapshot template" in panel.console()
    shot_cell(page, 1, "panel-2-running")

    panel.click("Pause")
    panel.wait_state("paused", 20)
    assert panel.enabled() == {"Resume", "Stop"}
    time.sleep(2)
    paused_at = panel.latest_sample()
    assert "paused" in panel.annotations()  # the pause is shaded and labelled while it lasts
    shot_cell(page, 1, "panel-3-paused")

    panel.click("Resume")
    panel.wait_state("running", 20)
    assert panel.enabled() == {"Pause", "Stop"}
    panel.wait_newer_sample(paused_at, 10)
    deadline = time.monotonic() + 10
    while panel.guest_behind() < 1:  # the guest's clock stood still for the 2 s pause: its line stepped up
        assert time.monotonic() < deadline, f"the guest-clock line shows {panel.guest_behind()} s behind"
        time.sleep(0.2)
    shot_cell(page, 1, "panel-4-resumed")

    panel.click("Stop")
    panel.wait_state("stopped", 60)
    assert panel.enabled() == set()  # a stopped vlab.VM cannot start again: Start is not offered
    shot_cell(page, 1, "panel-5-stopped")
    assert "the last lines read before the VM stopped" in panel.text()
    assert error_outputs(page) == []
    assert js_errors == []


def wait_all_cell(page: Any, index: int, timeout_s: float = 120) -> None:
    page.wait_for_function(
        f"() => {{ const w = window.jupyterapp.shell.currentWidget;"
        f" const p = document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')[{index}];"
        f" return w.sessionContext.session.kernel.status === 'idle' && /\\[\\d+\\]/.test(p.textContent); }}",
        timeout=timeout_s * 1000, polling=200)


# ---------------------------------------------------------------- labs, Run All


def run_lab(page: Any, server: LabServer, workdir: Path, number: str) -> tuple[list[str], int]:
    """Run all of lab *number*, save it; the JavaScript errors seen and the saved file's size."""
    js_errors = watch_js_errors(page)
    name = lab(number).name
    started = time.monotonic()
    run_all_cells(page, server, name, timeout_s=900)
    wait_all_run(page, 60)
    record_timing(f"lab {number} Run All (s)", time.monotonic() - started)
    errors = error_outputs(page)
    assert errors == [], errors
    save_notebook(page)
    size = (workdir / name).stat().st_size
    record_timing(f"lab {number} saved size (MB)", size / 1e6)
    return js_errors, size


def test_no_lab_diagram_has_overlapping_edge_labels(page: Any, server: LabServer) -> None:
    # Markdown renders without running anything: every lab's mermaid diagrams, as JupyterLab draws them.
    measured: dict[str, list[tuple[int, int]]] = {}
    for path in sorted((REPO / "labs").glob("[0-9][0-9]-*.ipynb")):
        count = len(re.findall(r"```mermaid", path.read_text()))
        if not count:
            continue  # opening a notebook costs seconds; one without diagrams has nothing to measure
        open_notebook(page, server, path.name, kernel=False)
        page.wait_for_function(f"() => document.querySelectorAll('.jp-RenderedMermaid img').length >= {count}",
                               timeout=60_000)
        measured[path.name] = mermaid_label_overlaps(page)
        assert len(measured[path.name]) == count, f"{path.name}: {count} diagrams, {measured[path.name]} drawn"
    assert sum(len(d) for d in measured.values()) >= 3, measured
    overlapping = {name: d for name, d in measured.items() if any(pairs for _, pairs in d)}
    assert not overlapping, f"(edge labels, overlapping pairs) per diagram: {overlapping}"


def cell_with(page: Any, text: str) -> Any:
    return page.locator(".jp-Notebook .jp-Cell", has_text=text).first


def test_lab01_runs_and_leaves_the_vm_panel_frozen_in_its_final_state(
        page: Any, server: LabServer, workdir: Path) -> None:
    js_errors, size = run_lab(page, server, workdir, "01")
    panel = PanelView(page, code_cell_index(page, "panel = lab.vm_panel(vm1)"))
    shot_cell(page, panel.index, "lab01-panel")
    assert panel.state() == "stopped"
    assert panel.enabled() == set()
    assert panel.points() >= 4
    assert "paused" in panel.annotations()  # the student's raw-QMP pause (q3) shows on the chart
    assert size <= MAX_SAVED_BYTES
    assert js_errors == []


def test_lab04_runs_with_its_charts_rendered(page: Any, server: LabServer, workdir: Path) -> None:
    js_errors, size = run_lab(page, server, workdir, "04")
    diagrams = page.locator(".jp-RenderedMermaid")
    for i in range(diagrams.count()):
        shot(diagrams.nth(i), f"lab04-diagram-{i + 1}")
    charts = page.locator(".js-plotly-plot")
    assert charts.count() >= 3
    charts.first.scroll_into_view_if_needed()
    shot(charts.first, "lab04-gantt")
    assert size <= MAX_SAVED_BYTES
    assert js_errors == []


def test_lab07_runs_and_its_migration_view_stays_as_a_static_chart(
        page: Any, server: LabServer, workdir: Path) -> None:
    js_errors, size = run_lab(page, server, workdir, "07")
    view_cell = cell_with(page, "view = MigrationView(")
    view_cell.scroll_into_view_if_needed()
    shot(view_cell, "lab07-migration-view")
    assert view_cell.locator(".js-plotly-plot").count() == 1  # still visible after view.close()
    assert view_cell.locator(".jupyter-widgets").count() == 0  # the static figure replaced the widget
    static = cell_with(page, "plots.migration_chart(run.records()")
    static.scroll_into_view_if_needed()
    shot(static, "lab07-round-charts")
    ticks = [t.strip() for t in static.locator(".xtick text").all_text_contents()]
    assert ticks and all(re.fullmatch(r"\d+", t) for t in ticks), ticks  # whole rounds only
    assert size <= MAX_SAVED_BYTES
    assert js_errors == []
