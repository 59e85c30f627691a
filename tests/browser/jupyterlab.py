"""Drive JupyterLab in headless Chromium with Playwright: start a server, run every cell of a notebook.

Debian's ``chromium`` is used (``executable_path``); Playwright's own browser download cannot work offline.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying (and failing) to reach Google's hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LabServer:
    url: str
    token: str
    process: subprocess.Popen[bytes]


@contextmanager
def jupyterlab(root: Path, log: Path) -> Iterator[LabServer]:
    """A JupyterLab server on localhost serving ``root``, stopped (with its kernels) on exit."""
    port, token = free_port(), secrets.token_hex(16)
    # JupyterLab 4 detaches off-screen cells from the DOM ("windowing"); render them all so the test can see them.
    settings = log.parent / "lab-settings"
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True, exist_ok=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}'
    )
    # No "get notified about news?" toast over the screenshots (and no fetch that fails offline).
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True, exist_ok=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    argv = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "JUPYTER_PLATFORM_DIRS": "1",
                                     "JUPYTERLAB_SETTINGS_DIR": str(settings)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab did not start; log:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield LabServer(url, token, proc)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (kernels included), SIGKILL what is left after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def watch_js_errors(page: Any) -> list[str]:
    """A list that fills with every uncaught exception and ``console.error`` of the page from now on."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: errors.append(f"console.error: {msg.text}") if msg.type == "error" else None)
    return errors


def save_notebook(page: Any) -> None:
    """Save the open notebook (as a student's Ctrl-S does) and wait until it is no longer dirty."""
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)


def run_all_cells(page: Any, server: LabServer, notebook: str, timeout_s: float) -> None:
    """Open ``notebook`` in JupyterLab, run all cells and wait until the kernel is idle with every cell run."""
    open_notebook(page, server, notebook)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    wait_all_run(page, timeout_s)


def wait_all_run(page: Any, timeout_s: float) -> None:
    """Wait until the kernel is idle and every code cell has an execution count."""
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " const k = w.sessionContext.session.kernel;"
        " const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);"
        " return k.status === 'idle' && prompts.length > 0 && prompts.every(t => /\\[\\d+\\]/.test(t)); }",
        timeout=timeout_s * 1000, polling=500)


def open_notebook(page: Any, server: LabServer, notebook: str, *, kernel: bool = True) -> None:
    """Open ``notebook`` in JupyterLab and wait until its kernel is idle (``kernel=False``: only until it is shown,
    for reading rendered Markdown)."""
    page.goto(f"{server.url}/lab/tree/{notebook}?token={server.token}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget", timeout=60_000)
    # A notebook without kernelspec metadata asks which kernel to start: take the default (Python 3).
    with contextlib.suppress(Exception):
        page.click(".jp-Dialog button.jp-mod-accept", timeout=5_000)
    if not kernel:
        return
    # Wait for the kernel before running, or the first cells race its start.
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return k && k.status === 'idle'; }", timeout=90_000)


def mermaid_label_overlaps(page: Any) -> list[tuple[int, int]]:
    """Per mermaid diagram on the page: how many edge labels it has, and how many pairs of them overlap.

    JupyterLab draws a diagram as an ``<img>`` of SVG; its SVG is put into the page for a moment so that the
    browser lays the labels out and their boxes can be measured.
    """
    found: list[list[int]] = page.evaluate("""
() => [...document.querySelectorAll('.jp-RenderedMermaid img')].map(img => {
  const text = decodeURIComponent(img.src.slice(img.src.indexOf(',') + 1));
  const host = document.createElement('div');
  host.style.cssText = 'position:absolute;left:0;top:0';
  host.innerHTML = text.slice(text.indexOf('<svg'));
  document.body.appendChild(host);
  const boxes = [...host.querySelectorAll('.edgeLabel')]
      .filter(e => !e.parentElement.closest('.edgeLabel') && e.textContent.trim())
      .map(e => e.getBoundingClientRect())
      .filter(r => r.width > 1 && r.height > 1);
  let overlaps = 0;
  for (let i = 0; i < boxes.length; i++)
    for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i], b = boxes[j];
      if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) overlaps++;
    }
  host.remove();
  return [boxes.length, overlaps];
})""")
    return [(labels, overlaps) for labels, overlaps in found]


def error_outputs(page: Any) -> list[str]:
    """``ename: evalue`` of every error output in the open notebook (read from its model, not the DOM), except in
    cells tagged ``raises-exception``: an unanswered question's stub in a student copy (see labs/README.md), which
    JupyterLab's Run All and nbval also carry on past."""
    errors: list[str] = page.evaluate(
        """() => {
            const model = window.jupyterapp.shell.currentWidget.content.model;
            const found = [];
            for (const cell of model.cells) {
                if (cell.type !== 'code') continue;
                if ((cell.getMetadata('tags') || []).includes('raises-exception')) continue;
                for (let i = 0; i < cell.outputs.length; i++) {
                    const out = cell.outputs.get(i).toJSON();
                    if (out.output_type === 'error') found.push(out.ename + ': ' + out.evalue);
                }
            }
            return found;
        }"""
    )
    return errors
