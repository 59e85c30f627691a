"""Tests for vlab.dashboards.chart: a figure shown as plotly JSON in an Output widget, re-sent only when it changed."""

from __future__ import annotations

import json

import plotly.graph_objects as go

from vlab.dashboards.chart import LiveChart


def test_a_redraw_sends_the_figure_only_when_it_changed() -> None:
    fig = go.Figure()
    fig.add_scatter(x=[0], y=[1], mode="lines+markers")
    chart = LiveChart(fig, height=200)
    chart.draw()
    chart.draw()  # nothing new: the browser is not asked to re-render
    assert chart.draws == 1
    fig.data[0].y = [2]
    chart.draw()
    assert chart.draws == 2
    (output,) = chart.widget.outputs
    assert output["data"]["application/vnd.plotly.v1+json"]["data"][0]["y"] == [2]
    assert chart.widget.layout.min_height == "210px"


def test_a_replacement_figure_keeps_the_charts_height_and_grows_the_room_for_a_taller_one() -> None:
    chart = LiveChart(go.Figure(), height=240)
    chart.draw(go.Figure())
    assert chart.figure.layout.height == 240
    taller = go.Figure()
    taller.update_layout(height=400)
    chart.draw(taller)
    assert chart.widget.layout.min_height == "410px"


def test_what_a_notebook_keeps_of_a_chart_is_its_json() -> None:
    fig = go.Figure()
    fig.add_scatter(x=list(range(240)), y=list(range(240)), mode="lines+markers")
    chart = LiveChart(fig)
    chart.draw()
    state = json.dumps(chart.widget.get_state(), default=str)
    assert len(state) < 30_000 and "Plotly.newPlot" not in state  # no plotly.js in the widget state
