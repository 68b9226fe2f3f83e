"""Shared PKI fixtures: one demo PKI per session, built by our own CLI."""

from pathlib import Path

import pytest

from pki import cli


@pytest.fixture(scope="session")
def demo_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway demo PKI (pki demo --dir) built once per test session; treat it as read-only."""
    d = tmp_path_factory.mktemp("demo-pki")
    assert cli.main(["demo", "--dir", str(d)]) == 0
    return d
