from __future__ import annotations

from vlab.plots import Slice, gantt_chart
from vlab.toyvmm import INSNS_PER_MS, Machine, Trace


def test_trace_records_plot_ready_slices_and_summaries() -> None:
    trace = Trace()
    trace.add_run("a", 0, 0, 30, "slice")
    trace.add_run("b", 1, 30, 40, "yield")
    trace.add_idle(40, 50)
    assert trace == [Slice("a/0", "a", 0, 30, "slice"), Slice("b/1", "b", 30, 40, "yield"),
                     Slice("idle", "idle", 40, 50, "idle")]
    assert trace.busy_time() == {"a": 30, "b": 10}
    assert trace.shares() == {"a": 0.75, "b": 0.25}
    assert trace.in_ms()[1] == Slice("b/1", "b", 30 / INSNS_PER_MS, 40 / INSNS_PER_MS, "yield")


def test_a_real_run_yields_a_chart_with_one_row_per_vcpu() -> None:
    with Machine() as machine:
        machine.add_guest("compute", name="c")
        machine.add_guest("sleeper", name="s")
        trace = machine.run(ms=50)
        rows = {y for bar in gantt_chart(trace.in_ms(), time_unit="virtual ms").data for y in bar.y}
        assert rows >= {"c/0", "s/0"}
        assert trace[-1].end == machine.now
