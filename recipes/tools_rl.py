"""Tool-use GRPO on math the model cannot do in its head: what experiments/grpo_tools.py runs.

    bootstrap   the demo policy of recipes.bootstrap (pretrain + SFT on built-in math), its pretraining
                text and tokenizer also covering rendered tool-use chats of EASY problems
    tool SFT    the tool-call format on EASY problems (calculator call -> result -> '#### N'), mixed
                with plain math chats so the policy still answers without tools (cached)
    GRPO        on HARD problems, multi-turn rollouts with a calculator (rollout.tool_worker)
    report      held-out HARD accuracy before/after, with the tool and without it, tool calls and
                turns per episode
"""
from __future__ import annotations

import json
import logging
import signal
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from recipes.cli import parse_config
from recipes.errors import run_or_exit
from learner.config import OptimConfig
from minimind.data import synthetic_math as sm
from minimind.data import tool_math as tm
from minimind.generate import SamplingParams
from minimind.tokenizer import MiniMindTokenizer, check_fits, render_chat
from reward.actor import RewardConfig
from rollout.env import ToolEnv, ToolRegistry, calculator_tool
from rollout.multiturn import EnvConfig
from rollout.worker import RolloutConfig

from recipes.bootstrap import BootstrapMismatch, bootstrap_policy
from recipes.rl_config import BootstrapConfig, GRPOMathConfig
from recipes.driver import DriverConfig
from recipes.math_rl import Prepared, policy_config, run_math_rl, start_actors
from recipes.seeds import derive_seed

log = logging.getLogger(__name__)


@dataclass
class ToolSFTConfig:
    steps: int = 400
    """SFT updates on the tool format (0 skips the stage: --init already knows it)."""
    lr: float = 1e-3
    """Peak learning rate."""
    batch_size: int = 16
    """Chats per update."""
    n_tool: int = 2000
    """EASY tool-use chats (calculator call, result, answer)."""
    n_plain: int = 1000
    """Plain math chats mixed in (answers without tools), so the no-tool ability stays."""
    n_copy: int = 1000
    """'Repeat exactly: <numbers>' chats mixed in: copying numbers of up to 7 digits apart from
    arithmetic, so the model carries a hard question's numbers into its call and the result into its
    answer (measured in docs/tools_and_environments.md)."""
    n_pretrain_chats: int = 500
    """Rendered EASY tool chats added to the bootstrap's pretraining text and tokenizer (0: none)."""


@dataclass
class ToolsGRPOConfig(GRPOMathConfig):
    """GRPO with a calculator tool: multi-turn episodes on hard arithmetic."""
    run_dir: str = "runs/grpo_tools"
    # the tool path needs the answer format, not the bootstrap's own arithmetic (hard problems are
    # beyond it either way): a shorter SFT than grpo_math's, on worked answers only, keeps the whole
    # run near 13 min on 2 cores
    bootstrap: BootstrapConfig = field(default_factory=lambda: BootstrapConfig(sft_steps=500, sft_worked_fraction=1.0))
    n_prompts: int = 2000
    eval_size: int = 200
    eval_samples: int = 0
    env: EnvConfig = field(default_factory=EnvConfig)
    sft: ToolSFTConfig = field(default_factory=ToolSFTConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(SamplingParams(n=8, max_new_tokens=64)))
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(answer_mode="hash", format_weight=0.0,
                                                                      tool_format_weight=0.1))
    driver: DriverConfig = field(default_factory=lambda: DriverConfig(steps=40, prompts_per_step=16))
    # micro-batches of 32 rows (grpo_math's 64 hold ~1.3 GB here: each row attends to a ~575-token tool
    # prompt): the same gradient and step time, one micro-batch of activations held at a time
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, warmup_steps=0, min_lr_ratio=0.1,
                                                                   weight_decay=0.0, micro_batch_size=32))
    algo: ClassVar[str] = "grpo"
    # an episode's response holds its turns AND the observations between them, up to this budget
    response_budget_field: ClassVar[str] = "env.max_total_tokens"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset or self.test_dataset:
            raise ValueError("--dataset / --test-dataset: grpo_tools uses its built-in tool-use math only")


def tool_registry(cfg: ToolsGRPOConfig) -> ToolRegistry:
    return ToolRegistry().add(calculator_tool())


def _tool_sft(cfg: ToolsGRPOConfig, base: Path, tools: list[dict]) -> Path:
    """SFT of `base` on the tool format (cached in <run_dir>/tool_sft, reused with the same settings)."""
    from recipes.supervised_config import SFTConfig
    from recipes.supervised import run_sft

    root = Path(cfg.run_dir) / "tool_sft"
    final, record = root / "final", root / "settings.json"
    wanted = {**asdict(cfg.sft), "base": str(base), "seed": cfg.seed}
    if (final / "model.safetensors").is_file():
        made = json.loads(record.read_text()) if record.is_file() else None
        if made != wanted:
            raise BootstrapMismatch(f"{root} was made with other settings ({made}); delete it or use another --run-dir")
        return final
    s = cfg.sft
    seed = derive_seed(cfg.seed, "tool-sft") % 2**31
    chats = [tm.tool_chat(p, tools) for p in tm.tool_problems(s.n_tool, seed, "train", "easy")]
    chats += sm.sft_records(sm.generate_problems(s.n_plain, seed, "train")) + tm.copy_chats(s.n_copy, seed)
    data = sm.write_jsonl(chats, root / "data" / "sft.jsonl")
    print(f"[tool-sft] {s.n_tool} easy tool-use chats + {s.n_plain} plain chats + {s.n_copy} copy chats, "
          f"{s.steps} steps")
    run_sft(SFTConfig(run_dir=str(root), init=str(base), data=str(data), steps=s.steps, batch_size=s.batch_size,
                      seq_len=384, optim=replace(SFTConfig().optim, lr=s.lr), seed=cfg.seed, eval_n=0,
                      progress=cfg.progress))
    record.write_text(json.dumps(wanted, indent=2))
    return final


def prepare_tools(cfg: ToolsGRPOConfig) -> Prepared:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tools = tool_registry(cfg).schemas()
    if cfg.init:
        base = Path(cfg.init)
    else:
        seed = derive_seed(cfg.seed, "tool-pretrain") % 2**31
        easy = tm.tool_problems(cfg.sft.n_pretrain_chats, seed, "train", "easy")
        texts = [render_chat([{k: v for k, v in m.items() if k != "tools"} for m in tm.tool_chat(p, tools)["conversations"]],
                             tools=tools) for p in easy]
        base = bootstrap_policy(run_dir, cfg.bootstrap, cfg.seed, cfg.progress, extra_texts=texts)
    if not base.exists():
        raise FileNotFoundError(f"--init {base}: no such checkpoint")
    init = _tool_sft(cfg, base, tools) if cfg.sft.steps else base
    tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else (init if init.is_dir() else init.parent)
    tok = MiniMindTokenizer.load(tok_dir)
    model_cfg = policy_config(init, cfg.pth)
    check_fits(tok, model_cfg, tokenizer_flag="--tokenizer")
    train = tm.tool_problems(cfg.n_prompts, derive_seed(cfg.seed, "rl-prompts") % 2**31, "train", "hard")
    test = tm.tool_problems(cfg.eval_size, cfg.seed + 1, "test", "hard")
    train_p, test_p = tm.tool_prompts(train), tm.tool_prompts(test)
    longest = max(len(tok.encode(tok.apply_chat_template(p["messages"], add_generation_prompt=True, tools=tools)))
                  for p in train_p[:64] + test_p[:64])
    if longest + cfg.env.max_total_tokens > model_cfg.max_position_embeddings:
        raise ValueError(f"prompts of up to {longest} tokens plus --env.max-total-tokens={cfg.env.max_total_tokens} "
                         f"exceed the policy's context of {model_cfg.max_position_embeddings} tokens: lower "
                         f"--env.max-total-tokens")
    return Prepared(init, tok_dir, train_p, test_p, model_cfg,
                    extra_evals={"notool": tm.tool_prompts(test, tools=False)} if test else {})


def start_tool_actors(cfg: ToolsGRPOConfig, prep: Prepared, device: str):
    from rollout.tool_worker import ToolRolloutActor

    env = ToolEnv(tool_registry(cfg), timeout_s=cfg.env.tool_timeout_s)
    return start_actors(cfg, prep, device, ToolRolloutActor, {"env": env, "env_cfg": cfg.env})


def print_tool_summary(summary: dict[str, Any]) -> None:
    b, a = summary["eval_before"], summary["eval_after"]
    rows = [("held-out HARD accuracy, with the calculator", "eval_accuracy"),
            ("held-out HARD accuracy, without tools", "notool_accuracy"),
            ("tool calls per episode (with the calculator)", "eval_tool_calls"),
            ("failed tool calls per episode", "eval_tool_errors"),
            ("assistant turns per episode", "eval_turns")]
    width = max(len(r[0]) for r in rows)
    print("  tool use, greedy, before -> after GRPO:")
    for label, key in rows:
        if key in b and key in a:
            print(f"  {label:<{width}}  {b[key]:.3f} -> {a[key]:.3f}")
    if "eval_accuracy" in b and "eval_accuracy" in a:
        print(f"  lift with the tool: {100 * (a['eval_accuracy'] - b['eval_accuracy']):+.1f} points\n")


def run_tools_rl(cfg: ToolsGRPOConfig) -> dict[str, Any]:
    summary = run_math_rl(cfg, prepare_fn=prepare_tools, start_fn=start_tool_actors)
    print_tool_summary(summary)
    return summary


def cli_main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_config(ToolsGRPOConfig, argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return run_or_exit(lambda: run_tools_rl(cfg))
