"""External programs the tests drive: present, or a failure that says how to get them.

`make test` installs them (tools/ensure-tools, apt-get as root on Debian).
A test that needs one fails, never skips, when it is missing.
"""

from __future__ import annotations

import shutil

import pytest

DEBIAN_PACKAGES = {
    "curl": "curl",
    "openssl": "openssl",
    "haproxy": "haproxy",
    "chromium": "chromium",
    "certutil": "libnss3-tools",
    # Debian keeps these in /usr/lib/postgresql/NN/bin (tests/postgres.py looks there too).
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    # deploy/systemd is checked offline (tests/test_deploy_units.py): no running systemd needed.
    "systemd-analyze": "systemd",
    "systemd-sysusers": "systemd",
}


def install_hint(name: str) -> str:
    package = DEBIAN_PACKAGES.get(name, name)
    return (
        f"{name} is not installed; install it with: sudo apt-get install -y {package} "
        "(or run `make test`, which installs it when run as root on Debian)"
    )


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(install_hint(name), pytrace=False)
    return path
