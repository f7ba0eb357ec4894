"""`experiments/grpo_math.py --loss ...` as a user runs it (a subprocess joining the session's Ray):
`--help` shows each loss's section with the values a run uses; DAPO runs with its dynamic sampling;
CISPO with int8 rollouts runs with the truncated importance sampling on by default and logs the
mismatch every step. Every loss's update itself is tested through the Learner in
tests/test_policy_loss_wiring.py (a subprocess per loss would cost ~10 s each here)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rl_helpers import ROOT, run_grpo_math, train_rows

def _all_train_rows(run_dir) -> list[dict]:
    """metrics.jsonl's step rows with every key (timings included)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if "reward_mean" in r]


FAST = ("--driver.steps=1", "--eval-size=0", "--rollout-workers=1", "--driver.checkpoint-every=0")


def test_help_shows_every_loss_section_with_its_defaults():
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "grpo_math.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for expected in ("--loss {grpo,dr_grpo,dapo,gspo,cispo}", "--dapo.clip.eps-high FLOAT",
                     "--gspo.clip.eps-low FLOAT", "--dr-grpo.max-response-len INT|none", "--cispo.ratio-max FLOAT",
                     "--update.tis-cap FLOAT|none", "--update.tis-level {token,sequence}",
                     "--rollout.quantize {none,int8}"):
        assert expected in text, expected
    def default(flag: str) -> str:   # the help entry comes after the usage line: the last occurrence
        return text.rsplit(flag, 1)[1].split("(default: ", 1)[1].split(")", 1)[0]

    assert default("--dapo.clip.eps-high FLOAT") == "0.28"          # DAPO's clip-higher
    assert (default("--gspo.clip.eps-low FLOAT"), default("--gspo.clip.eps-high FLOAT")) == ("0.0003", "0.0004")
    assert (default("--cispo.ratio-max FLOAT"), default("--cispo.kl.coef FLOAT")) == ("5.0", "0.1")
    assert default("--dr-grpo.clip.agg-mode STR") == "seq-mean-token-sum-norm"
    assert (default("--grpo.clip.eps-high FLOAT"), default("--grpo.kl.coef FLOAT")) == ("0.28", "0.01")

@pytest.mark.slow
def test_dapo_and_int8_cispo_runs(ray_local, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    dapo = tmp_path / "dapo"
    run_grpo_math(dapo, address, *FAST, "--loss=dapo")
    cfg = json.loads((dapo / "config.json").read_text())
    assert cfg["loss"] == "dapo" and cfg["filter_zero_variance"] is True
    assert cfg["dapo"]["overlong_max_len"] == 8                     # the run's --rollout.sampling.max-new-tokens
    assert json.loads((dapo / "summary.json").read_text())["loss"] == "dapo"
    row = train_rows(dapo)[0]
    # dynamic sampling: either informative groups were trained on, or every refill was spent looking
    assert row.get("zero_var_frac") == 0.0 or row.get("refills") == 2, row
    # DAPO has no KL term: no reference model is built and no reference forward runs
    assert not any("reference_seconds" in r or "kl" in r for r in _all_train_rows(dapo))

    int8 = tmp_path / "int8"
    out = run_grpo_math(int8, address, *FAST, "--driver.steps=2", "--loss=cispo", "--rollout.quantize=int8",
                     f"--init={dapo / 'bootstrap' / 'sft' / 'final'}")
    assert "grpo with the cispo loss" in out.stdout
    cfg = json.loads((int8 / "config.json").read_text())
    assert (cfg["rollout"]["quantize"], cfg["update"]["tis_cap"], cfg["update"]["tis_level"]) == ("int8", 2.0, "token")
    rows = train_rows(int8)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:   # the int8 engine samples from a policy measurably different from the fp32 learner's
        assert 1e-5 < r["mismatch_abs_mean"] <= r["mismatch_abs_max"] < 0.5, r
        assert 0 <= r["tis_truncated_frac"] <= 1 and abs(r["tis_weight_mean"] - 1) < 0.1, r
        assert "is_weight_mean" in r                                 # CISPO's own statistics
    # CISPO's KL (coef 0.1) reads the reference: it is built and run every step
    assert all(r["kl"] >= 0 and r["reference_seconds"] > 0 for r in _all_train_rows(int8))
