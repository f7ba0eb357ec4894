"""OpenMP wait settings (runtime/process.py): the choice, that libgomp really reads it, and that the RL
recipe hands it to its Ray workers according to whether learner and rollouts overlap."""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from recipes.ray_session import init_ray
from runtime import SPIN_COUNT, openmp_env, set_openmp_env

ROOT = Path(__file__).resolve().parents[1]


def test_turn_taking_spins_and_overlap_sleeps():
    assert openmp_env(overlapping=False, environ={}) == {"GOMP_SPINCOUNT": str(SPIN_COUNT)}
    assert openmp_env(overlapping=True, environ={}) == {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "7"},
                                  {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}])
def test_the_users_settings_win(user):
    env = {"PATH": "/bin", **user}
    assert openmp_env(overlapping=False, environ=env) == user
    assert openmp_env(overlapping=True, environ=env) == user


def test_set_after_torch_is_imported_is_an_error():
    assert "torch" in sys.modules
    with pytest.raises(RuntimeError, match="already imported"):
        set_openmp_env(overlapping=False)


def test_libgomp_reads_the_setting_when_torch_loads():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"  # libgomp prints its settings (GOMP_* too) when it initialises
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from runtime import set_openmp_env\n"
            "set_openmp_env(overlapping=False)\n"
            "import torch; torch.ones(4).sum()\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"GOMP_SPINCOUNT = '{SPIN_COUNT}'" in out.stderr + out.stdout


@pytest.mark.parametrize("off_policy,expected", [(False, {"GOMP_SPINCOUNT": str(SPIN_COUNT)}),
                                                 (True, {"OMP_WAIT_POLICY": "PASSIVE"})])
def test_rl_recipe_gives_ray_workers_the_setting_of_its_mode(monkeypatch, off_policy, expected):
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(k, raising=False)
    calls = []
    fake_ray = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    init_ray(address=None, dashboard=False, dashboard_host="127.0.0.1", overlapping=off_policy)
    assert calls and calls[0]["runtime_env"] == {"env_vars": expected}
