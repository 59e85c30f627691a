"""A plotly chart inside a panel, redrawn by replacing one output: no ``FigureWidget``.

A ``FigureWidget`` ships plotly.js (about 5 MB) as the state of every widget: it
is saved into the notebook with the widget state and takes seconds to reach the
browser before the first point shows. :class:`LiveChart` instead keeps a plain
:class:`plotly.graph_objects.Figure` and shows it, as plotly's MIME type, in an
``ipywidgets.Output``: JupyterLab's plotly renderer draws it with the plotly.js
it loads once per page, and the widget's state is the figure's JSON (kilobytes).
A redraw replaces the output; a fixed height keeps the page from jumping.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from vlab.plots import mimebundle

__all__ = ["LiveChart"]


class LiveChart:
    """*figure* shown in :attr:`widget`; change the figure, then call :meth:`draw`.

    :param figure: the figure to show (kept, not copied: panels update it in place).
    :param height: pixels; also the figure's layout height.
    """

    def __init__(self, figure: go.Figure, *, height: int = 300) -> None:
        self.height = height
        self.figure = figure
        self.figure.update_layout(height=height)
        self.widget = widgets.Output(layout=widgets.Layout(min_height=f"{height + 10}px"))
        self.draws = 0

    def draw(self, figure: go.Figure | None = None) -> None:
        """Show the figure as it is now, or *figure* from now on (callable from any thread: it only sets the
        widget's outputs)."""
        if figure is not None:
            figure.update_layout(height=figure.layout.height or self.height)
            self.figure = figure
        output: dict[str, Any] = {"output_type": "display_data", "data": mimebundle(self.figure), "metadata": {}}
        height = self.figure.layout.height
        if height:  # a figure that grew (a Gantt chart with a new lane) gets the room it needs
            self.widget.layout.min_height = f"{height + 10}px"
        self.widget.outputs = (output,)
        self.draws += 1
