"""Test set-up: 8 host devices for mesh tests, the shared data directory, the torch oracle."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def _shared_data() -> pathlib.Path:
    env = os.environ.get("ADAPTATION_SHARED_DATA")
    if env:
        return pathlib.Path(env)
    return REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The shared real-data directory (`../shared/data`); skips the test where it is absent."""
    path = _shared_data()
    if not path.is_dir():
        pytest.skip(f"shared data directory {path} is absent (set ADAPTATION_SHARED_DATA)")
    return path
