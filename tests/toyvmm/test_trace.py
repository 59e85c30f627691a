from __future__ import annotations

from vlab.toyvmm import Machine, Slice, Trace


def test_trace_summaries_and_gantt_figure() -> None:
    trace = Trace([Slice(0, 30, "a", 0, "slice"), Slice(30, 40, "b", 0, "yield"), Slice(40, 50, "idle", 0, "idle")])
    assert trace.busy_time() == {"a": 30, "b": 10}
    assert trace.shares() == {"a": 0.75, "b": 0.25}
    figure = trace.gantt()
    assert {bar.name for bar in figure.data} == {"slice", "yield", "idle"}


def test_a_real_run_yields_a_chart_with_one_row_per_vcpu() -> None:
    with Machine() as machine:
        machine.add_guest("compute", name="c")
        machine.add_guest("sleeper", name="s")
        trace = machine.run(ms=50)
        rows = {y for bar in trace.gantt().data for y in bar.y}
        assert rows >= {"c/0", "s/0"}
        assert trace[-1].end == machine.now
