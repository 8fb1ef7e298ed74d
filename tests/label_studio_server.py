"""pytest side of bench/label_studio_server.py: a real Label Studio server for the round-trip tests, started once
per test process (SQLite in a temporary folder, a free localhost port, a user with a legacy and a personal
access token), or a skip that says how to install it."""

from __future__ import annotations

import pytest

from bench import label_studio_server


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """The running server (stopped at the end of the session)."""
    if not label_studio_server.EXECUTABLE.is_file():
        pytest.skip(f"Label Studio is not installed at {label_studio_server.EXECUTABLE}: "
                    f"`make .venv/label-studio/.installed` (make test does it)")
    try:
        with label_studio_server.running(tmp_path_factory.mktemp("label_studio")) as server:
            yield server
    except label_studio_server.StartError as error:
        pytest.fail(str(error))
