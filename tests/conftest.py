"""Shared fixtures. `ray_local`: one small local Ray for the whole test session (2 CPUs, no
dashboard); reused when something already started Ray, and shut down only if started here.
`one_thread`: torch on one intra-op thread for a module of tiny-model tests. `server` / `client`: the
OpenAI-compatible app serving a random-init tiny checkpoint, one per test module, and an `openai`
client for it (tests/serving_helpers.py)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster on a shared, oversubscribed CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    """(Served app, serving_helpers.Reference, checkpoint folder) of a random-init tiny model."""
    from ray import serve as rayserve
    from serving_helpers import Reference, free_port, make_checkpoint

    from serving.app import start
    from serving.engine import EngineConfig

    ckpt = make_checkpoint(tmp_path_factory.mktemp("serve") / "tiny")
    served = start(model=ckpt, port=free_port(), max_n=4, batch=EngineConfig(max_batch_size=64, batch_wait_ms=20))
    yield served, Reference(ckpt), ckpt
    served.shutdown()
    rayserve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server[0].url + "/v1", api_key="unused", max_retries=0, timeout=60)
