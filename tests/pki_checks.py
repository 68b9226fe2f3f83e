"""What every `pki` CLI test asserts about a refusal, and how it looks at a directory.

A refusal is one ``pki: ...`` line on stderr, exit status 2, nothing on
stdout, and (checked with `snapshot`) the directory exactly as it was.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from pathlib import Path

#: The `run` fixture (tests/conftest.py): argv -> (exit status, stdout, stderr).
Run = Callable[..., tuple[int, str, str]]


def snapshot(d: Path) -> dict[str, tuple[int, bytes]]:
    """Every file's mtime and bytes: equal snapshots mean nothing was touched."""
    if not d.exists():
        return {}
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in d.iterdir() if p.is_file()}


def refused(result: tuple[int, str, str], message: str) -> None:
    code, out, err = result
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, f"expected one line, got {err!r}"
    assert err.startswith("pki: ")
    assert "Traceback" not in err
    assert re.search(message, err), err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
