"""Math RL on Ray (GRPO / PPO / SPO): the recipe behind experiments/{grpo,ppo,spo}_math.py.

    prepare      tokenizer + starting policy: --init (a checkpoint folder or a MiniMind .pth), else
                 a small model pretrained and SFT'd on the built-in math data through the same
                 learner (cached in <run_dir>/bootstrap, so a second run reuses it)
    actors       LearnerActor ("learner"), RolloutActor x N ("rollout-i"), RewardActor x M ("reward-j"),
                 fractional GPUs when CUDA is visible, CPU shares otherwise
    driver       rollout.driver.RLDriver moves object refs; the script only sees stats
    report       held-out exact-match accuracy before/after, metrics.jsonl, curves.png, summary table
"""
from __future__ import annotations

import copy
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from minimind.checkpoint import load_model, read_checkpoint_config, save_model
from minimind.config import MiniMindConfig
from minimind.data import synthetic_math as sm
from minimind.data.datasets import RLPromptDataset
from minimind.model import MiniMindScoreModel
from minimind.omp import openmp_env
from minimind.tokenizer import MiniMindTokenizer
from reward.actor import RewardConfig
from rollout.driver import DriverConfig
from rollout.worker import RolloutConfig

from .cli import config_to_dict
from .config import OptimConfig
from .learner import Learner
from .losses import GRPOLoss, PPOLoss, SPOTracker
from .metrics import MetricsLogger, plot_metrics
from .recipes import PretrainConfig, SFTConfig, run_pretrain, run_sft
from .rl_stages import GRPOStage, PPOStage, RLUpdateConfig, SPOStage

log = logging.getLogger(__name__)

RL_PROMPT_SEED_OFFSET = 10_000
PLOT_KEYS = ["reward_mean", "accuracy", "eval_accuracy", "eval_sampled_accuracy", "kl", "entropy", "response_length",
             "clip_frac", "tokens_per_second", "step_seconds"]


@dataclass
class BootstrapConfig:
    preset: str = "demo"
    """Model preset of the bootstrapped policy."""
    n_train: int = 4000
    """Built-in training problems for pretrain/SFT."""
    pretrain_steps: int = 300
    """Pretraining updates (batch 16 x 128 tokens)."""
    sft_steps: int = 2000
    """SFT updates (batch 32; 1200 left the model before or after its arithmetic phase change by
    numeric luck: 20% or 63% held-out)."""
    sft_lr: float = 2e-3
    """SFT peak learning rate."""


@dataclass
class MathRLConfig:
    run_dir: str = "runs/grpo_math"
    """Output folder (metrics.jsonl, curves.png, summary.json, final/, checkpoint/, bootstrap/)."""
    algo: Literal["grpo", "ppo", "spo"] = "grpo"
    """RL algorithm."""
    init: str | None = None
    """Starting policy: a checkpoint folder or a MiniMind .pth; none = bootstrap a small model."""
    tokenizer: str | None = None
    """Tokenizer folder; none = the one next to --init (or the bootstrap's)."""
    dataset: str | None = None
    """RL prompts: GSM8K-style jsonl/parquet ({question|prompt, answer}); none = built-in math."""
    test_dataset: str | None = None
    """Held-out prompts in the same format; none = the built-in TEST split."""
    n_prompts: int = 4000
    """Built-in RL training prompts (4000 >= 120 steps x 32: each prompt is seen about once)."""
    eval_size: int = 1000
    """Held-out prompts for the before/after accuracy (200 gave run-to-run noise of ~±3 points)."""
    eval_samples: int = 8
    """Also measure the policy's own accuracy (pass@1 as mean@k): this many samples per held-out
    prompt at the rollout temperature (0 = greedy accuracy only)."""
    rollout_workers: int = 1
    """RolloutActor count (prompts are split across them)."""
    reward_workers: int = 1
    """RewardActor count."""
    address: str | None = None
    """Ray address: none starts a local Ray; 'auto' joins the cluster of `ray up` / `ray start`."""
    dashboard: bool = True
    """Start the Ray dashboard (local Ray only)."""
    dashboard_host: str = "127.0.0.1"
    """Dashboard bind address; 0.0.0.0 exposes it on the network (only if you mean to)."""
    device: str = "auto"
    """auto: cuda if visible here or the Ray cluster has GPUs (actors share one GPU with fractional
    num_gpus), else cpu."""
    learner_resources: dict = field(default_factory=dict)
    """Custom Ray resources the learner actor requires, e.g. '{"head_node": 0.1}' (pins it to nodes
    started with --resources='{"head_node": 1}')."""
    rollout_resources: dict = field(default_factory=dict)
    """Custom Ray resources each rollout actor requires, e.g. '{"worker_node": 0.1}'."""
    threads: int = 0
    """torch threads per actor on CPU (0 = all cores: rollout and learning alternate on-policy)."""
    seed: int = 0
    """Seed of model init, prompt order and sampling."""
    resume: bool = False
    """Continue from <run_dir>/checkpoint (learner, optimizer, SPO tracker, prompt position)."""
    spo_init_samples: int = 4
    """SPO: offline samples per prompt that initialise its Beta tracker."""
    spo_prompts: int = 1024
    """SPO: size of the prompt pool (every prompt gets a tracker initialised offline)."""
    progress: bool = True
    """Show a progress bar."""
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    # measured on the bootstrapped demo model: a constant lr leaves the last policy wherever the
    # noise of the final steps put it (greedy held-out -1.6 to +7.6 across seeds); cosine to 10%
    # settles it. total_steps 1 = "the run's update count" (__post_init__ raises it to that).
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=0, total_steps=1,
                                                                    min_lr_ratio=0.1, weight_decay=0.0))
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(group_size=8, max_new_tokens=40))
    reward: RewardConfig = field(default_factory=RewardConfig)
    driver: DriverConfig = field(default_factory=lambda: DriverConfig(steps=120, prompts_per_step=32))
    # one update per rollout batch (more with --update.minibatches/epochs; the stale batches of
    # off-policy mode see ratio != 1 and the clip either way): on the demo model 4 minibatches of
    # 64 samples made Adam steps of mostly noise and lost greedy held-out accuracy in every run
    # (0.638 -> 0.59..0.62); 1 minibatch of 256 did not
    update: RLUpdateConfig = field(default_factory=lambda: RLUpdateConfig(epochs=1, minibatches=1))
    grpo: GRPOLoss = field(default_factory=lambda: GRPOLoss(kl_coef=0.01, eps_high=0.28))
    ppo: PPOLoss = field(default_factory=PPOLoss)
    filter_zero_variance: bool = False
    """GRPO: drop groups whose rewards are all equal and refill the batch with new prompts."""

    def __post_init__(self) -> None:
        if self.rollout_workers < 1 or self.reward_workers < 1:
            raise ValueError(f"rollout_workers={self.rollout_workers} and reward_workers="
                             f"{self.reward_workers} must be >= 1")
        # the learner must score tokens under the distribution they were sampled from
        self.update.temperature = self.rollout.temperature
        if self.algo == "spo":
            self.rollout.group_size = 1
            self.driver.prompt_sampling = "spo"
        self.optim.total_steps = max(self.optim.total_steps, self.driver.steps * self.update.epochs *
                                     self.update.minibatches)


# ----------------------------------------------------------------------------- preparation
@dataclass
class Prepared:
    init_dir: Path                 # a folder load_model reads (or a .pth path)
    tokenizer_dir: Path
    train_prompts: list[dict]      # {"prompt", "key", "answer"}
    eval_prompts: list[dict]


def bootstrap_policy(run_dir: Path, cfg: BootstrapConfig, seed: int) -> Path:
    """Pretrain then SFT a small model on the built-in math data; cached: reused when present and
    made with the same settings (recorded in bootstrap/settings.json), an error otherwise."""
    root = run_dir / "bootstrap"
    sft_final = root / "sft" / "final"
    record = root / "settings.json"
    wanted = {**asdict(cfg), "seed": seed}
    if (sft_final / "model.safetensors").is_file():
        made = json.loads(record.read_text()) if record.is_file() else None
        if made != wanted:
            if made is None:
                what = "has no record of its settings (an older version made it)"
            else:
                differ = [k for k in wanted if made.get(k) != wanted[k]]
                what = (f"was made with {', '.join(f'{k}={made.get(k)!r}' for k in differ)} but this run "
                        f"asks for {', '.join(f'{k}={wanted[k]!r}' for k in differ)}")
            raise BootstrapMismatch(
                f"{root} {what}. Delete {root} to rebuild it, use another --run-dir, or start from it "
                f"anyway with --init {sft_final}")
        log.info("reusing bootstrapped policy %s", sft_final)
        return sft_final
    print(f"[bootstrap] no --init: pretraining + SFT of a '{cfg.preset}' model on built-in math "
          f"(cached in {root})")
    run_pretrain(PretrainConfig(run_dir=str(root / "pretrain"), preset=cfg.preset, n_train=cfg.n_train,
                                steps=cfg.pretrain_steps, seed=seed))
    run_sft(SFTConfig(run_dir=str(root / "sft"), init=str(root / "pretrain" / "final"), n_train=cfg.n_train,
                      steps=cfg.sft_steps, lr=cfg.sft_lr, seed=seed, eval_n=0))
    record.write_text(json.dumps(wanted, indent=2))
    return sft_final


class BootstrapMismatch(ValueError):
    """A cached bootstrap made with other settings than the ones asked for."""


def prepare(cfg: MathRLConfig) -> Prepared:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    init = Path(cfg.init) if cfg.init else bootstrap_policy(run_dir, cfg.bootstrap, cfg.seed)
    if not init.exists():
        raise FileNotFoundError(f"--init {init}: no such checkpoint")
    init_folder = init if init.is_dir() else init.parent
    tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else init_folder
    if not (tok_dir / "tokenizer.json").is_file() and not tok_dir.name.endswith(".json"):
        raise FileNotFoundError(f"no tokenizer.json in {tok_dir}: pass --tokenizer")
    if cfg.dataset:
        train = RLPromptDataset(cfg.dataset).driver_prompts()
    else:
        # a different seed than the bootstrap's SFT data: RL should see problems SFT did not
        # memorise (still the train split, so the held-out test split stays disjoint)
        problems = sm.generate_problems(cfg.n_prompts, cfg.seed + RL_PROMPT_SEED_OFFSET, "train")
        train = RLPromptDataset(sm.rl_records(problems)).driver_prompts()
    if cfg.test_dataset:
        test = RLPromptDataset(cfg.test_dataset).driver_prompts()[: cfg.eval_size]
    else:
        test_problems = sm.generate_problems(cfg.eval_size, cfg.seed + 1, "test")
        test = RLPromptDataset(sm.rl_records(test_problems)).driver_prompts()
    if cfg.algo == "spo":
        train = train[: cfg.spo_prompts]
    return Prepared(init, tok_dir, train, test)


# ----------------------------------------------------------------------------- learner
def _grpo(cfg: MathRLConfig) -> GRPOStage:
    return GRPOStage(loss_fn=cfg.grpo, update=cfg.update, filter_zero_variance=cfg.filter_zero_variance)


def _ppo(cfg: MathRLConfig) -> PPOStage:
    return PPOStage(loss_fn=cfg.ppo, update=cfg.update)


def _spo(cfg: MathRLConfig) -> SPOStage:
    return SPOStage(loss_fn=cfg.grpo, update=cfg.update, tracker=SPOTracker())


STAGES: dict[str, Callable[[MathRLConfig], Any]] = {"grpo": _grpo, "ppo": _ppo, "spo": _spo}


def make_learner(cfg: MathRLConfig, init: Path, device: str) -> Learner:
    """Runs inside the learner actor: policy, frozen reference, critic (PPO), stage."""
    if device == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    policy = load_model(init, dtype=torch.float32)
    ref = copy.deepcopy(policy)  # same weights: no second read and parse of the checkpoint
    critic = None
    if cfg.algo == "ppo":
        critic = MiniMindScoreModel(policy.config)
        critic.model.load_state_dict(policy.model.state_dict())  # critic trunk starts from the policy
    return Learner(policy, STAGES[cfg.algo](cfg), cfg.optim, ref_model=ref, critic=critic, device=device)


# ----------------------------------------------------------------------------- Ray
def resolve_device(name: str) -> str:
    """auto: cuda when this process sees a GPU, or (a driver on a CPU head node) when the Ray
    cluster it joined has GPUs; else cpu."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0:
        return "cuda"
    return "cpu"


def init_ray(cfg: MathRLConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # Learner and rollouts take turns on the cores unless off-policy overlaps them: bounded OpenMP
    # spinning when they take turns, passive waits when they overlap (minimind/omp.py has the numbers).
    env = {"env_vars": openmp_env(overlapping=cfg.driver.off_policy)}
    if cfg.address:
        ctx = ray.init(address=cfg.address, runtime_env=env)
    else:
        ctx = ray.init(include_dashboard=cfg.dashboard, dashboard_host=cfg.dashboard_host, num_cpus=os.cpu_count(),
                       runtime_env=env)
    if getattr(ctx, "dashboard_url", None):
        print(f"[ray] dashboard: http://{ctx.dashboard_url}  (actors: learner, rollout-i, reward-j)")


def placement(cfg: MathRLConfig, device: str) -> dict[str, dict]:
    """Resource requests per actor kind. One GPU: the learner (policy + reference + critic, and
    the optimizer state) gets half, rollout workers share 0.4, reward actors share 0.1 (only the
    reward model needs it). CPU: small shares so every actor schedules on a 2-core machine; the
    actors then take turns on the cores (rollout, then learning) in on-policy mode."""
    if device.startswith("cuda"):
        return {"learner": {"num_gpus": 0.5, "num_cpus": 1},
                "rollout": {"num_gpus": 0.4 / cfg.rollout_workers, "num_cpus": 1},
                "reward": {"num_gpus": 0.1 / cfg.reward_workers if cfg.reward.rm_path else 0, "num_cpus": 0.5}}
    return {"learner": {"num_cpus": 0.5}, "rollout": {"num_cpus": 0.5 / cfg.rollout_workers},
            "reward": {"num_cpus": 0.25 / cfg.reward_workers}}


@dataclass
class Actors:
    learner: Any
    rollouts: list
    rewards: list


def policy_config(init: Path) -> MiniMindConfig:
    """The policy's config without loading its weights in the driver when a config.json says it
    (a bare MiniMind .pth has none: its config is inferred from the tensors, which needs them)."""
    if init.is_dir() or (init.suffix == ".safetensors" and (init.parent / "config.json").is_file()):
        return read_checkpoint_config(init)[0]
    return load_model(init).config


def start_actors(cfg: MathRLConfig, prep: Prepared, device: str) -> Actors:
    from learner.actor import LearnerActor
    from reward.actor import RewardActor
    from rollout.worker import RolloutActor

    res = placement(cfg, device)
    model_cfg = policy_config(prep.init_dir).to_dict()
    threads = cfg.threads or os.cpu_count() or 1
    custom = lambda r: {"resources": dict(r)} if r else {}  # noqa: E731  (pin to nodes by custom resource)
    learner = LearnerActor.options(name="learner", **res["learner"], **custom(cfg.learner_resources)).remote(
        lambda: make_learner(cfg, prep.init_dir, device), threads=threads)
    restart = dict(max_restarts=3, max_task_retries=3)  # a dead rollout/reward actor is rebuilt, its task re-run
    rollouts = [RolloutActor.options(name=f"rollout-{i}", **res["rollout"], **custom(cfg.rollout_resources),
                                     **restart).remote(
        cfg.rollout, model_cfg, str(prep.tokenizer_dir), device=device, worker_index=i, threads=threads)
        for i in range(cfg.rollout_workers)]
    rewards = [RewardActor.options(name=f"reward-{j}", **res["reward"], **restart).remote(cfg.reward)
               for j in range(cfg.reward_workers)]
    return Actors(learner, rollouts, rewards)


def print_placement(actors: Actors) -> None:
    """On a multi-node cluster: which node each actor runs on (id prefix, IP, custom resources)."""
    import ray

    nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    if len(nodes) < 2:
        return
    std = ("CPU", "GPU", "memory", "object_store_memory")
    where = lambda a: ray.get(a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))  # noqa: E731
    named = [("learner", actors.learner)] + [(f"rollout-{i}", a) for i, a in enumerate(actors.rollouts)] + \
        [(f"reward-{j}", a) for j, a in enumerate(actors.rewards)]
    parts = []
    for name, actor in named:
        nid = where(actor)
        node = nodes.get(nid, {})
        extra = sorted(k for k in node.get("Resources", {}) if k not in std and not k.startswith(("node:", "accelerator")))
        parts.append(f"{name}={nid[:12]}@{node.get('NodeManagerAddress', '?')}({','.join(extra)})")
    print(f"[ray] {len(nodes)} nodes; placement: " + " ".join(parts), flush=True)


def init_spo_tracker(driver: Any, actors: Actors, cfg: MathRLConfig) -> None:
    """Offline tracker init: `spo_init_samples` samples per prompt with the starting policy."""
    import ray

    from rollout.driver import summarize_groups

    scored = driver._launch(driver.prompts, {"n": cfg.spo_init_samples})
    groups = ray.get([summarize_groups.remote(r) for r in scored])
    rewards_by_key: dict[str, list[float]] = {}
    for g in groups:
        for key, rs in g.items():
            rewards_by_key.setdefault(key, []).extend(rs)
    ray.get(actors.learner.call.remote("stage.init_tracker", rewards_by_key))


# ----------------------------------------------------------------------------- run
def _loggable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("step", "time")}


def run_math_rl(cfg: MathRLConfig) -> dict[str, Any]:
    import ray

    from rollout.driver import RLDriver

    t_start = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    prep = prepare(cfg)
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    init_ray(cfg)
    device = resolve_device(cfg.device)
    actors = start_actors(cfg, prep, device)
    print_placement(actors)
    ckpt_dir = str((run_dir / "checkpoint").resolve())
    if not cfg.resume and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()
    logger = MetricsLogger(run_dir, total_steps=cfg.driver.steps, desc=cfg.algo, enable_progress=cfg.progress,
                           ray_metrics=True)
    driver = RLDriver(cfg.driver, actors.learner, actors.rollouts, actors.rewards, prep.train_prompts,
                      prep.eval_prompts, on_step=lambda step, stats: logger.log(step, **_loggable(stats)),
                      checkpoint_dir=ckpt_dir)
    try:
        if cfg.resume:
            extra = ray.get(actors.learner.call.remote("load_checkpoint", ckpt_dir))
            driver.load_state_dict(extra)
            logger.drop_after(driver.step)
            print(f"[resume] continuing at step {driver.step} from {ckpt_dir}")
        elif cfg.algo == "spo":
            init_spo_tracker(driver, actors, cfg)
        t0 = time.perf_counter()
        before = driver.evaluate(cfg.rollout.max_new_tokens, cfg.eval_samples)
        eval_s = time.perf_counter() - t0
        print(f"[eval] before {cfg.algo}: held-out accuracy greedy {before['eval_accuracy']:.3f}"
              + (f", sampled {before['eval_sampled_accuracy']:.3f}" if cfg.eval_samples else "")
              + f" on {len(prep.eval_prompts)} prompts ({eval_s:.1f}s)")
        logger.log(driver.step, **{k: v for k, v in before.items()})
        t_rl = time.perf_counter()
        history = driver.run()
        rl_s = time.perf_counter() - t_rl
        after = driver.evaluate(cfg.rollout.max_new_tokens, cfg.eval_samples)
        logger.log(driver.step, **after)
        state = ray.get(actors.learner.weights.remote())
    finally:
        logger.close()
        ray.shutdown()
    policy = load_model(prep.init_dir)
    policy.load_state_dict(state)
    final = save_model(policy, run_dir / "final", extra_meta={"algo": cfg.algo})
    MiniMindTokenizer.load(prep.tokenizer_dir).save(final)
    plot_metrics(logger.path, run_dir / "curves.png", keys=PLOT_KEYS, title=f"{cfg.algo} on math")
    summary = summarize_run(cfg, before, after, history, rl_s, time.perf_counter() - t_start)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    return summary


def summarize_run(cfg: MathRLConfig, before: dict, after: dict, history: list[dict], rl_seconds: float,
                  wall_seconds: float) -> dict[str, Any]:
    mean = lambda key: (sum(h.get(key, 0.0) for h in history) / len(history)) if history else 0.0  # noqa: E731
    return {
        "algo": cfg.algo, "steps": len(history),
        "accuracy_before": before.get("eval_accuracy", 0.0), "accuracy_after": after.get("eval_accuracy", 0.0),
        "sampled_accuracy_before": before.get("eval_sampled_accuracy"),
        "sampled_accuracy_after": after.get("eval_sampled_accuracy"),
        "reward_first": history[0].get("reward_mean", 0.0) if history else 0.0,
        "reward_last": history[-1].get("reward_mean", 0.0) if history else 0.0,
        "rl_seconds": round(rl_seconds, 1), "wall_seconds": round(wall_seconds, 1),
        "seconds_per_step": round(rl_seconds / max(len(history), 1), 2),
        "generate_seconds_per_step": round(mean("generate_seconds"), 3),
        "learn_seconds_per_step": round(mean("learn_seconds"), 3),
        "tokens_per_second": round(mean("tokens_per_second"), 1),
        "run_dir": cfg.run_dir,
    }


def print_summary(s: dict[str, Any]) -> None:
    rows = [("algorithm", s["algo"]), ("RL steps", s["steps"]),
            ("held-out accuracy, greedy", f"{s['accuracy_before']:.3f} -> {s['accuracy_after']:.3f}")]
    if s.get("sampled_accuracy_before") is not None:
        rows.append(("held-out accuracy, sampled (policy)",
                     f"{s['sampled_accuracy_before']:.3f} -> {s['sampled_accuracy_after']:.3f}"))
    rows += [("train reward first -> last step", f"{s['reward_first']:.3f} -> {s['reward_last']:.3f}"),
             ("seconds per RL step", s["seconds_per_step"]),
             ("  generate / learn", f"{s['generate_seconds_per_step']} / {s['learn_seconds_per_step']}"),
             ("rollout tokens/s", s["tokens_per_second"]), ("RL wall time (s)", s["rl_seconds"]),
             ("total wall time (s)", s["wall_seconds"]), ("outputs", s["run_dir"])]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows) + "\n")


def cli_main(algo: str, argv: list[str] | None = None) -> dict[str, Any]:
    """What experiments/<algo>_math.py main() does."""
    from .cli import parse_config

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # every algorithm sees ~256 sampled responses per step: GRPO 32 prompts x G=8, PPO 64 x 4
    # (the critic is the baseline, groups are not needed), SPO 256 prompts x 1. PPO and SPO steps
    # cost more (critic; 256 distinct prompts), so they run 60 steps to stay near GRPO's wall time.
    defaults = {"grpo": {},
                "ppo": {"run_dir": "runs/ppo_math", "rollout.group_size": 4, "driver.prompts_per_step": 64,
                        "driver.steps": 60, "update.minibatches": 4},
                "spo": {"run_dir": "runs/spo_math", "driver.prompts_per_step": 256, "driver.steps": 60}}[algo]
    argv = list(argv if argv is not None else __import__("sys").argv[1:])
    pre = [f"--algo={algo}"] + [f"--{k.replace('_', '-')}={v}" for k, v in defaults.items()]
    cfg = parse_config(MathRLConfig, pre + argv)
    # Ctrl-C: raise KeyboardInterrupt in the driver so `finally` shuts Ray down cleanly
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_math_rl(cfg)
    except BootstrapMismatch as e:  # a message to act on, not a traceback
        raise SystemExit(f"error: {e}") from None
