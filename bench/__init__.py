"""`make bench`: server CPU per operation, ours vs stock gunicorn, plain HTTP and nginx (issue 13).

Run as `python -m bench [--quick] [--rounds N]`; see bench/run.py. The pure
parts (/proc parsing, statistics, targets, rendering) live in procstat.py and
report.py so tests/test_bench_harness.py can check them without servers.
"""
