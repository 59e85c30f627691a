"""What a live dashboard chart costs: vlab's LiveChart (plotly JSON in an ``ipywidgets.Output``) against the
baseline it replaced, plotly's ``FigureWidget``, both measured in this run, in a fresh Python process each.

Per kind of chart, for the VM panel's figure with 240 samples: the time to the first drawn chart in a fresh
process (imports included: what the first chart of a kernel costs), the time of one redraw, and the bytes a saved
notebook keeps per chart (the widget state JupyterLab or nbclient store). The browser side — how long a student
waits for the first live chart — is measured by tests/browser (``test-artifacts/browser/timings.json``).

    .venv/bin/python bench/bench_dashboards.py [--repeat 5]

Targets: saved bytes per chart ≤ 1/100 of the FigureWidget's; first chart (browser) ≤ 2 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_BYTES_RATIO = 1 / 100

_MEASURE = r"""
import json, sys, time
started = time.perf_counter()
import plotly.graph_objects as go
from vlab.dashboards.chart import LiveChart

def figure():
    fig = go.Figure()
    n = 240
    fig.add_scatter(x=[i * 0.25 for i in range(n)], y=[100 + i % 7 for i in range(n)], mode="lines+markers")
    fig.add_scatter(x=[i * 0.25 for i in range(n)], y=[(i * 37) % 100 for i in range(n)], mode="lines+markers")
    return fig

kind = sys.argv[1]
if kind == "LiveChart":
    chart = LiveChart(figure())
    chart.draw()
    first = time.perf_counter() - started
    t = time.perf_counter(); chart.figure.data[1].y = list(reversed(chart.figure.data[1].y)); chart.draw()
    redraw = time.perf_counter() - t
    state = chart.widget.get_state()
else:
    widget = go.FigureWidget(figure())
    state = widget.get_state()  # what the frontend receives first (and a saved notebook keeps)
    first = time.perf_counter() - started
    t = time.perf_counter(); widget.data[1].y = list(reversed(widget.data[1].y))
    redraw = time.perf_counter() - t
def plain(value):
    return "<%d bytes>" % len(value) if isinstance(value, bytes) else str(value)
size = len(json.dumps(state, default=plain))
print(json.dumps({"first": first, "redraw": redraw, "bytes": size}))
"""


def measure(kind: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _MEASURE, kind], capture_output=True, text=True, cwd=REPO,
                          check=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = {kind: [measure(kind) for _ in range(args.repeat)] for kind in ("FigureWidget", "LiveChart")}
    median = {kind: {key: statistics.median(r[key] for r in found) for key in ("first", "redraw", "bytes")}
              for kind, found in runs.items()}
    for kind, m in median.items():
        print(f"{kind:<13} first chart {m['first'] * 1000:7.0f} ms   redraw {m['redraw'] * 1000:6.1f} ms   "
              f"saved state {m['bytes'] / 1024:8.1f} KiB   (median of {args.repeat})")
    base, ours = median["FigureWidget"], median["LiveChart"]
    print(f"ratios LiveChart/FigureWidget: first chart {ours['first'] / base['first']:.2f}, "
          f"saved bytes {ours['bytes'] / base['bytes']:.4f} (target ≤ {TARGET_BYTES_RATIO})")
    timings = REPO / "test-artifacts" / "browser" / "timings.json"
    if timings.exists():
        print("browser (tests/browser):", json.loads(timings.read_text()))


if __name__ == "__main__":
    main()
