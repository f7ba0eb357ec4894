"""Process-level settings shared by every CPU process of a run (see runtime/process.py)."""
from .process import SPIN_COUNT, openmp_env, set_openmp_env, tune_malloc

__all__ = ["SPIN_COUNT", "openmp_env", "set_openmp_env", "tune_malloc"]
