"""recipes.cli (dataclass -> argparse) and learner.metrics (jsonl, Ray gauges); plots: test_curves.py."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import torch

from recipes.cli import build_parser, config_to_dict, parse_config
from learner.metrics import MetricsLogger, RayMetrics, read_metrics


@dataclass
class OptimCfg:
    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 10

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"OptimCfg.lr={self.lr}: must be > 0")


@dataclass
class TrainCfg:
    run_name: str = "run"
    steps: int = 100
    group_size: int = field(default=8, metadata={"help": "Completions per prompt."})
    use_kl: bool = True
    bf16: bool = False
    max_len: Optional[int] = 256
    kl_coef: float | None = 0.01
    layer_sizes: tuple[int, ...] = (64, 64)
    tags: list[str] = field(default_factory=list)
    algo: Literal["grpo", "ppo", "spo"] = "grpo"
    optim: OptimCfg = field(default_factory=OptimCfg)

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"TrainCfg.group_size={self.group_size}: GRPO needs at least 2")


# ----------------------------------------------------------------------------- cli


def test_defaults_without_flags():
    cfg = parse_config(TrainCfg, [])
    assert cfg == TrainCfg()


def test_every_type_and_nested_fields():
    cfg = parse_config(TrainCfg, [
        "--run-name", "exp1", "--steps", "7", "--group_size", "4",
        "--max-len", "128", "--kl-coef", "0.5",
        "--layer-sizes", "32,16,8", "--tags", "a,b , c", "--algo", "ppo",
        "--optim.lr", "3e-4", "--optim.betas", "0.8,0.99",
        "--optim.schedule", "linear", "--optim.warmup-steps", "5",
    ])
    assert cfg.run_name == "exp1" and cfg.steps == 7 and cfg.group_size == 4
    assert cfg.max_len == 128 and cfg.kl_coef == 0.5
    assert cfg.layer_sizes == (32, 16, 8) and isinstance(cfg.layer_sizes, tuple)
    assert cfg.tags == ["a", "b", "c"]
    assert cfg.algo == "ppo"
    assert isinstance(cfg.optim, OptimCfg)
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.betas == (0.8, 0.99)
    assert cfg.optim.schedule == "linear" and cfg.optim.warmup_steps == 5


@dataclass
class RecipeCfg:
    # the recipe's own choice for a nested section differs from that section's class defaults
    optim: OptimCfg = field(default_factory=lambda: OptimCfg(lr=5e-5, warmup_steps=0))
    inner: TrainCfg = field(default_factory=lambda: TrainCfg(steps=3, optim=OptimCfg(lr=2e-2)))


def test_one_nested_flag_keeps_the_recipe_defaults_of_its_section(tmp_path):
    cfg = parse_config(RecipeCfg, ["--optim.schedule", "linear", "--inner.group-size", "4"])
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.schedule) == (5e-5, 0, "linear")
    assert (cfg.inner.steps, cfg.inner.group_size, cfg.inner.optim.lr) == (3, 4, 2e-2)
    cfg = parse_config(RecipeCfg, ["--inner.optim.warmup-steps", "7"])
    assert (cfg.inner.steps, cfg.inner.optim.lr, cfg.inner.optim.warmup_steps) == (3, 2e-2, 7)
    (tmp_path / "c.json").write_text(json.dumps({"optim": {"lr": 1e-4}}))
    cfg = parse_config(RecipeCfg, ["--config", str(tmp_path / "c.json")])
    assert (cfg.optim.lr, cfg.optim.warmup_steps) == (1e-4, 0)
    assert parse_config(RecipeCfg, []) == RecipeCfg()


def test_math_rl_flags_keep_the_recipe_defaults():
    from recipes.rl_config import GRPOMathConfig

    default = GRPOMathConfig()
    cfg = parse_config(GRPOMathConfig, ["--driver.prompts-per-step", "64", "--rollout.sampling.n", "4",
                                        "--grpo.kl.coef", "0.05", "--optim.lr", "5e-5"])
    assert (cfg.driver.steps, cfg.rollout.sampling.max_new_tokens, cfg.grpo.clip.eps_high, cfg.optim.weight_decay) == (
        default.driver.steps, default.rollout.sampling.max_new_tokens, default.grpo.clip.eps_high,
        default.optim.weight_decay)
    assert (cfg.driver.prompts_per_step, cfg.rollout.sampling.n, cfg.grpo.kl.coef, cfg.optim.lr) == (64, 4, 0.05, 5e-5)


def test_flags_have_one_name_each(capsys):
    """No aliases: an old spelling of a flag is an unknown flag (usage + one error line, exit 2)."""
    from recipes.rl_config import GRPOMathConfig

    with pytest.raises(SystemExit) as e:
        parse_config(GRPOMathConfig, ["--rollout.group-size", "4"])
    assert e.value.code == 2
    assert "unrecognized arguments: --rollout.group-size 4" in capsys.readouterr().err


def test_help_prints_the_values_the_run_uses(capsys):
    """Nested sections show their recipe's defaults (a default_factory's values), not their class's."""
    from recipes.rl_config import GRPOMathConfig, PPOMathConfig

    with pytest.raises(SystemExit):
        parse_config(GRPOMathConfig, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, value in (("--optim.lr", "0.0001"), ("--driver.steps", "120"), ("--driver.prompts-per-step", "32"),
                        ("--rollout.sampling.max-new-tokens", "40"), ("--optim.warmup-steps", "0"),
                        ("--optim.weight-decay", "0.0"), ("--grpo.clip.eps-high", "0.28"), ("--grpo.kl.coef", "0.01")):
        after = out[out.rindex(flag + " "):]
        assert f"(default: {value})" in after[:400], (flag, after[:400])
    with pytest.raises(SystemExit):
        parse_config(PPOMathConfig, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    after = out[out.rindex("--driver.steps "):]
    assert "(default: 60)" in after[:300]


def test_rl_temperature_zero_is_refused_at_parse_time(capsys):
    from recipes.rl_config import GRPOMathConfig

    with pytest.raises(SystemExit) as e:
        parse_config(GRPOMathConfig, ["--rollout.sampling.temperature", "0"])
    assert e.value.code == 2 and "temperature > 0" in capsys.readouterr().err


@pytest.mark.parametrize("argv, use_kl, bf16", [
    (["--bf16"], True, True),
    (["--no-use-kl"], False, False),
    (["--use-kl", "false", "--bf16", "true"], False, True),
    (["--use-kl", "no", "--bf16", "yes"], False, True),
    (["--bf16", "--no-bf16"], True, False),  # last one wins
])
def test_bool_flags(argv, use_kl, bf16):
    cfg = parse_config(TrainCfg, argv)
    assert (cfg.use_kl, cfg.bf16) == (use_kl, bf16)


def test_bool_flag_rejects_garbage(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainCfg, ["--bf16", "maybe"])
    assert "expected true or false" in capsys.readouterr().err


def test_optional_none():
    cfg = parse_config(TrainCfg, ["--max-len", "none", "--kl-coef", "None"])
    assert cfg.max_len is None and cfg.kl_coef is None


def test_non_optional_int_rejects_none(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainCfg, ["--steps", "none"])
    assert "--steps" in capsys.readouterr().err


def test_literal_invalid_choice(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(TrainCfg, ["--optim.schedule", "exponential"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--optim.schedule" in err and "invalid choice" in err and "'cosine'" in err


def test_fixed_length_tuple_checked(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainCfg, ["--optim.betas", "0.9,0.95,0.99"])
    assert "expected 2 comma-separated values" in capsys.readouterr().err


def test_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(TrainCfg, ["--stepz", "3"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --stepz" in capsys.readouterr().err


def test_no_prefix_abbreviation(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainCfg, ["--ste", "3"])
    capsys.readouterr()


def test_post_init_error_surfaces_with_field_name(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(TrainCfg, ["--group-size", "1"])
    assert exc.value.code == 2
    assert "group_size=1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(TrainCfg, ["--optim.lr", "-1"])
    assert "OptimCfg.lr=-1.0" in capsys.readouterr().err


def test_json_config_overridden_by_flags(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({
        "steps": 50, "algo": "spo", "layer_sizes": [1, 2], "max_len": None,
        "optim": {"lr": 0.1, "schedule": "constant"},
    }))
    cfg = parse_config(TrainCfg, ["--config", str(path), "--steps", "9", "--optim.lr", "0.2"])
    assert cfg.steps == 9  # flag beats file
    assert cfg.algo == "spo" and cfg.layer_sizes == (1, 2) and cfg.max_len is None  # file
    assert cfg.optim.lr == 0.2 and cfg.optim.schedule == "constant"
    assert cfg.optim.warmup_steps == 10  # dataclass default


def test_json_config_errors(tmp_path, capsys):
    bad_key = tmp_path / "bad_key.json"
    bad_key.write_text(json.dumps({"optim": {"learning_rate": 1}}))
    with pytest.raises(SystemExit):
        parse_config(TrainCfg, ["--config", str(bad_key)])
    assert "learning_rate" in capsys.readouterr().err
    bad_choice = tmp_path / "bad_choice.json"
    bad_choice.write_text(json.dumps({"algo": "dqn"}))
    with pytest.raises(SystemExit):
        parse_config(TrainCfg, ["--config", str(bad_choice)])
    assert "invalid choice: 'dqn'" in capsys.readouterr().err


def test_help_text_from_metadata_and_docstring():
    text = build_parser(TrainCfg).format_help()
    assert "--optim.warmup-steps" in text and "--no-use-kl" in text
    assert "Completions per prompt. (default: 8)" in text  # metadata help
    assert "Peak learning rate." in text  # attribute docstring
    assert "--group_size" not in text  # underscore alias is accepted but hidden


def test_required_field(capsys):
    @dataclass
    class Needs:
        data_path: str
        seed: int = 0

    assert parse_config(Needs, ["--data-path", "x.jsonl"]).data_path == "x.jsonl"
    with pytest.raises(SystemExit):
        parse_config(Needs, [])
    assert "missing required argument --data-path" in capsys.readouterr().err


def test_config_to_dict_is_json_ready():
    cfg = parse_config(TrainCfg, ["--tags", "x"])
    d = config_to_dict(cfg)
    assert d["optim"]["betas"] == [0.9, 0.95] and d["layer_sizes"] == [64, 64]
    assert d["tags"] == ["x"]
    assert json.loads(json.dumps(d)) == d


def test_minimind_config_via_cli():
    from minimind.config import MiniMindConfig

    cfg = parse_config(MiniMindConfig, ["--hidden-size", "256", "--qk-norm",
                                        "--rope-scaling", '{"type": "yarn", "factor": 4}'])
    assert cfg.hidden_size == 256 and cfg.qk_norm is True
    assert cfg.rope_scaling == {"type": "yarn", "factor": 4}


# ----------------------------------------------------------------------------- metrics


def test_metrics_jsonl_round_trip(tmp_path):
    with MetricsLogger(tmp_path / "run", total_steps=3, enable_progress=False) as log:
        log.log(1, loss=torch.tensor(2.5), reward=0.25, acc=1)
        log.log(2, loss=float("nan"), reward=float("inf"), note="warmup")
        log.log(3, loss=torch.tensor([1.5]), kl=torch.tensor(-float("inf")))
        # each line is flushed as it is written
        assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    recs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(isinstance(r["time"], float) and r["time"] >= 0 for r in recs)
    assert recs[0]["loss"] == 2.5 and isinstance(recs[0]["loss"], float)
    assert recs[0]["reward"] == 0.25 and recs[0]["acc"] == 1
    assert recs[1]["loss"] is None and recs[1]["reward"] is None and recs[1]["note"] == "warmup"
    assert recs[2]["loss"] == 1.5 and recs[2]["kl"] is None
    # the file is strict JSON (no NaN / Infinity tokens)
    assert "NaN" not in (tmp_path / "run" / "metrics.jsonl").read_text()


def test_metrics_logger_appends_and_rejects_reserved(tmp_path):
    with MetricsLogger(tmp_path, enable_progress=False) as log:
        log.log(1, loss=1.0)
        with pytest.raises(ValueError, match="reserved"):
            log.log(2, time=3.0)
    with MetricsLogger(tmp_path, enable_progress=False) as log:
        log.log(2, loss=0.5)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_resume_drops_steps_logged_after_the_checkpoint(tmp_path):
    """A run that crashed after step 6 with its last checkpoint at step 4 (and half a line written)
    resumes at 4: steps 5 and 6 are logged again, once."""
    with MetricsLogger(tmp_path, enable_progress=False) as log:
        log.log(0, eval_accuracy=0.5)
        for step in range(1, 7):
            log.log(step, loss=1.0 / step)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    with MetricsLogger(tmp_path, total_steps=8, enable_progress=False) as log:
        with pytest.warns(UserWarning, match="truncated"):
            assert log.drop_after(4) == 2
        for step in range(5, 9):
            log.log(step, loss=0.1)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(9))
    assert records[4]["loss"] == 0.25 and records[5]["loss"] == 0.1


def test_progress_bar_postfix(tmp_path, capsys):
    log = MetricsLogger(tmp_path, total_steps=4, desc="train", enable_progress=True)
    log.log(2, loss=1.25, reward=0.5, extra=3.0)
    assert log._bar.n == 2
    postfix = log._bar.postfix
    log.close()
    assert "loss=1.25" in postfix and "reward=0.5" in postfix
    capsys.readouterr()


def test_read_metrics_bad_line_and_truncated_tail(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1, "loss": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2"):
        read_metrics(p)
    p.write_text('{"step": 1, "loss": 1}\n{"step": 2, "lo')
    with pytest.warns(UserWarning, match="truncated"):
        assert read_metrics(p) == [{"step": 1, "loss": 1}]


def test_ray_metrics_without_ray_is_noop(tmp_path, monkeypatch):
    import ray

    # another test file in this process may have left a Ray session up: this is about "no Ray"
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert not RayMetrics.active()
    rm = RayMetrics()
    rm.log(1, reward=1.0, kl=torch.tensor(0.1))
    assert rm._gauges == {}
    with MetricsLogger(tmp_path, enable_progress=False, ray_metrics=True) as log:
        log.log(1, reward=0.5)
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["reward"] == 0.5


def test_ray_metrics_sets_sanitised_gauges(monkeypatch):
    import ray
    import ray.util.metrics as ray_metrics

    made = {}

    class FakeGauge:
        def __init__(self, name, description="", tag_keys=None):
            assert tag_keys == ("run",)
            self.values = []
            made[name] = self

        def set(self, value, tags=None):
            self.values.append((value, tags))

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray_metrics, "Gauge", FakeGauge)
    rm = RayMetrics(prefix="minimind", run="exp1")
    rm.log(3, **{"reward/mean": torch.tensor(0.75), "kl": float("nan"), "note": "x"})
    rm.log(4, **{"reward/mean": 0.5})
    assert set(made) == {"minimind_step", "minimind_reward_mean"}
    assert made["minimind_reward_mean"].values == [(0.75, {"run": "exp1"}), (0.5, {"run": "exp1"})]
    assert made["minimind_step"].values[-1] == (4.0, {"run": "exp1"})
    assert RayMetrics(prefix="").metric_name("1x-y") == "m_1x_y"
