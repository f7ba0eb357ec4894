"""Shared fixtures. `ray_local`: one small local Ray for the whole test session (2 CPUs, no
dashboard); reused when something already started Ray, and shut down only if started here."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local():
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    yield ray
    if started and ray.is_initialized():
        ray.shutdown()
