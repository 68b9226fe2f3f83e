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
}


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = DEBIAN_PACKAGES.get(name, name)
        pytest.fail(
            f"{name} is not installed; install it with: sudo apt-get install -y {package} "
            "(or run `make test`, which installs it when run as root on Debian)",
            pytrace=False,
        )
    return path
