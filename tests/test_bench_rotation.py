"""The pure parts of bench/rotation.py: the percentile and the report."""

from __future__ import annotations

from bench.rotation import Outcome, percentile, render


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 1.0) == 3.0


def test_the_report_has_a_row_per_mode_and_the_errors_seen() -> None:
    outcome = Outcome("in place", 1234, 0, 2, 4, 0, 1.5, 9.25, 40.0, ())
    broken = Outcome("SIGHUP", 99, 1, 0, 4, 8, 2.0, 30.0, 700.0, ("ResponseError: status 502",))
    text = render([outcome, broken], 16.0)
    assert "| in place | 1,234 | 0 | 2 | 4 | 0 | 1.50 | 9.25 | 40.0 |" in text
    assert "| SIGHUP | 99 | 1 | 0 | 4 | 8 | 2.00 | 30.00 | 700.0 |" in text
    assert "- SIGHUP: ResponseError: status 502" in text
