"""Every logger, the app's own included, goes to gunicorn's error log at --log-level, in its format.

No list of package names: ``acme.orders`` (tests/log_app.py) is a logger this
project has never heard of.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.servers import client_context, running, server_env


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [
        ("warning", ["WARNING"], ["INFO", "DEBUG"]),
        ("debug", ["DEBUG", "INFO", "WARNING"], []),
    ],
)
def test_the_apps_own_logger_follows_log_level_in_gunicorns_format(
    demo_pki: Path, tmp_path: Path, level: str, shown: list[str], hidden: list[str]
) -> None:
    ctx = client_context(demo_pki, "homepage")
    log_path = tmp_path / "server.log"
    env = server_env(demo_pki, "userservice")
    with running("log_app:app", env, log_path, ctx, args=("--log-level", level)) as server:
        text = server.wait_for_log("acme warning line")  # the last line the request writes
    for name in shown:
        line = f"acme {name.lower()} line"
        assert re.search(rf"\] \[\d+\] \[{name}\] {line}$", text, re.MULTILINE), text
    for name in hidden:
        assert f"acme {name.lower()} line" not in text
