"""Math RL on Ray (GRPO / PPO / SPO): what experiments/{grpo,ppo,spo}_math.py run.

    prepare      tokenizer + starting policy (--init, else the cached bootstrap), train/test prompts
    actors       LearnerActor ("learner"), RolloutActor x N ("rollout-i"), RewardActor x M ("reward-j"),
                 wrapped in actor groups (recipes.actors); fractional GPUs with CUDA, CPU shares otherwise
    driver       recipes.driver.RLDriver moves object refs; this module only sees stats
    report       held-out accuracy before/after, metrics.jsonl, curves.png, summary (recipes.report)
"""
from __future__ import annotations

import copy
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from recipes.cli import config_to_dict, parse_config
from recipes.errors import RunStopped, run_or_exit
from learner.group import LearnerFailed, LearnerGroup, actor_death
from recipes.inputs import check_checkpoint_path, check_data_path, check_device
from learner.learner import Learner, find_checkpoint
from recipes.run_folder import check_run_folder, resume_hint, start_fresh
from learner.curves import plot_curves
from learner.metrics import MetricsLogger
from minimind.checkpoint import PthOptions, check_checkpoint, load_model, save_model
from minimind.config import MiniMindConfig
from minimind.data import synthetic_math as sm
from minimind.data.datasets import RLPromptDataset
from minimind.model import MiniMindScoreModel
from minimind.tokenizer import MiniMindTokenizer, check_fits

from recipes.actors import ActorGroups, RewardGroup, RolloutGroup
from recipes.bootstrap import bootstrap_policy, sft_curve
from recipes.rl_config import BootstrapConfig, MathRLConfig
from recipes.driver import RLDriver, summarize_groups
from recipes.ray_session import init_ray, placement, print_placement, resolve_device
from recipes.prometheus import prometheus_binary, ray_targets, start_prometheus
from recipes.recording import check_record_dir, recorder, start_recording
from recipes.report import actors_peak_memory, print_summary, summarize_run
from recipes.rl_curves import RL_CURVES
from recipes.samplers import ShuffleSampler, WeightedSampler
from recipes.seeds import derive_seed
from recipes.watch import CollapseWatcher

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    init_dir: Path                 # a folder load_model reads (or a .pth path)
    tokenizer_dir: Path
    train_prompts: list[dict]      # {"prompt", "key", "answer"}
    eval_prompts: list[dict]
    model_config: MiniMindConfig   # the policy's, with the --pth.* values a .pth cannot tell
    extra_evals: dict[str, list[dict]] = field(default_factory=dict)
    """More held-out sets evaluated before and after (name -> prompts; keys <name>_accuracy, ...),
    e.g. the tool recipe's questions without the tools."""
    data: dict[str, str] = field(default_factory=dict)
    """What each stage saw (stage -> one line), for the summary."""


def prepare(cfg: MathRLConfig) -> Prepared:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    init = Path(cfg.init) if cfg.init else bootstrap_policy(run_dir, cfg.bootstrap, cfg.seed, cfg.progress)
    check_checkpoint_path(init, "--init")
    init_folder = init if init.is_dir() else init.parent
    tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else init_folder
    if not (tok_dir / "tokenizer.json").is_file() and not tok_dir.name.endswith(".json"):
        raise FileNotFoundError(f"no tokenizer.json in {tok_dir}: pass --tokenizer")
    tok = MiniMindTokenizer.load(tok_dir)
    model_cfg = policy_config(init, cfg.pth)
    check_fits(tok, model_cfg, tokenizer_flag="--tokenizer")
    limit = cfg.max_prompt_tokens or model_cfg.max_position_embeddings - cfg.rollout.sampling.max_new_tokens
    read = dict(tokenizer=tok, max_prompt_tokens=limit, truncate_long_prompts=cfg.truncate_long_prompts,
                report_path=run_dir / "skipped_lines.jsonl")
    data = {} if cfg.init else bootstrap_data(cfg.bootstrap, run_dir)
    if cfg.dataset:
        train = RLPromptDataset(cfg.dataset, **read).driver_prompts()
        data["rl"] = f"prompts of {cfg.dataset}"
    else:
        # every level, answers only; their own seed stream, still the train split (the held-out TEST
        # split stays disjoint by construction); written out so a user sees what RL saw
        problems = sm.generate_problems(cfg.n_prompts, derive_seed(cfg.seed, "rl-prompts"), "train")
        records = sm.write_jsonl(sm.rl_records(problems), run_dir / "data" / "rl_prompts.jsonl")
        train = RLPromptDataset(records, **read).driver_prompts()
        data["rl"] = (f"{len(problems)} prompts of levels {_levels(p.difficulty for p in problems)} with their "
                      f"final answers only (no worked solutions), scored by the verifier ({records})")
    if cfg.test_dataset:
        test = RLPromptDataset(cfg.test_dataset, **read).driver_prompts()[: cfg.eval_size]
        data["held-out"] = f"the first {len(test)} prompts of {cfg.test_dataset}"
    elif cfg.eval_size:
        problems = sm.generate_problems(cfg.eval_size, cfg.seed + 1, "test")
        records = sm.write_jsonl(sm.rl_records(problems), run_dir / "data" / "heldout.jsonl")
        test = RLPromptDataset(records, **read).driver_prompts()
        data["held-out"] = (f"{len(problems)} problems of levels {_levels(p.difficulty for p in problems)} from "
                            f"the TEST split, which no training stage draws from ({records})")
    else:
        test = []
    if cfg.algo == "spo":
        train = train[: cfg.prompts]
    return Prepared(init, tok_dir, train, test, model_cfg, data=data)


def _levels(levels: Iterable[int]) -> str:
    return ", ".join(str(d) for d in sorted(set(levels)))


def _shown_work(fraction: float) -> str:
    if fraction == 1:
        return "every answer with its worked solution"
    return (f"{100 * fraction:.0f}% of the answers with their worked solution, the rest the final answer alone "
            f"(\"#### N\")")


def bootstrap_data(cfg: BootstrapConfig, run_dir: Path) -> dict[str, str]:
    """What the bootstrap's stages saw, one line each (the built-in corpus of recipes.bootstrap), and
    SFT's last held-out evaluations (is it converged on its own levels?)."""
    out = {"pretrain": f"{cfg.n_train} problems of levels {_levels(sm.GENERATORS)} as plain text (question, worked "
                       f"solution) and arithmetic tables, train split",
           "sft": f"chats of levels {_levels(cfg.sft_difficulties)}"
                  f"{'' if set(cfg.sft_difficulties) == set(sm.GENERATORS) else ' only'} (those of the same "
                  f"{cfg.n_train} problems), train split, {_shown_work(cfg.sft_worked_fraction)}"}
    curve = sft_curve(run_dir)[-3:]
    if curve:
        levels = sorted({k for point in curve for k in point if k.startswith("eval_accuracy_")})
        out["sft held-out greedy (step: all / " + " / ".join(k[len("eval_accuracy_"):] for k in levels) + ")"] = \
            ", ".join(f"{p['step']}: " + " / ".join(f"{100 * p.get(k, float('nan')):.1f}" for k in
                                                    ["eval_accuracy", *levels]) for p in curve)
    return out


def make_learner(cfg: MathRLConfig, init: Path, device: str) -> Learner:
    """Runs inside the learner actor: policy, frozen reference (when a KL uses it), critic (PPO), stage."""
    if device == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(derive_seed(cfg.seed, "learner"))
    policy = load_model(init, dtype=torch.float32, **cfg.pth.kwargs())
    # same weights: no second read and parse of the checkpoint; none when no KL term reads it
    ref = copy.deepcopy(policy) if cfg.policy_loss.kl.needs_reference else None
    critic = None
    if cfg.algo == "ppo":
        critic = MiniMindScoreModel(policy.config)
        critic.model.load_state_dict(policy.model.state_dict())  # critic trunk starts from the policy
    return Learner(policy, cfg.stage(), cfg.optim.for_run(cfg.updates), ref_model=ref, critic=critic, device=device)


def policy_config(init: Path, pth: PthOptions | None = None) -> MiniMindConfig:
    """The policy's config, its checkpoint checked in the driver (before any actor loads it) from
    config.json and the safetensors header, without reading the weights (a bare MiniMind .pth has no
    header: its config is inferred from the tensors, which needs them)."""
    return check_checkpoint(init, **(pth or PthOptions()).kwargs())


def start_actors(cfg: MathRLConfig, prep: Prepared, device: str, rollout_actor: Any = None,
                 rollout_kwargs: dict | None = None) -> ActorGroups:
    """Learner, rollout workers (`rollout_actor` with `rollout_kwargs`: default RolloutActor) and
    reward actors, placed on the device."""
    from reward.actor import RewardActor
    from rollout.worker import RolloutActor

    rollout_actor = rollout_actor or RolloutActor
    ranks = cfg.learner.world_size
    res = placement(device, cfg.rollout_workers, cfg.reward_workers, bool(cfg.reward.rm_path), ranks)
    model_cfg = prep.model_config.to_dict()
    threads = cfg.threads or os.cpu_count() or 1
    custom = lambda r: {"resources": dict(r)} if r else {}  # noqa: E731  (pin to nodes by custom resource)
    # learner ranks split the cores evenly (they compute at the same time); the rollouts alternate with them
    learner = LearnerGroup.start(lambda: make_learner(cfg, prep.init_dir, device), cfg.learner, device,
                                 res["learner"], threads=cfg.threads or max(1, threads // ranks),
                                 options=custom(cfg.learner_resources), recorder=recorder(cfg))
    restart = dict(max_restarts=3, max_task_retries=3)  # a dead rollout/reward actor is rebuilt, its task re-run
    rollouts = [rollout_actor.options(name=f"rollout-{i}", **res["rollout"], **custom(cfg.rollout_resources),
                                      **restart).remote(
        cfg.rollout, model_cfg, str(prep.tokenizer_dir), device=device, worker_index=i, threads=threads,
        **(rollout_kwargs or {}))
        for i in range(cfg.rollout_workers)]
    rewards = [RewardActor.options(name=f"reward-{j}", **res["reward"], **restart).remote(cfg.reward)
               for j in range(cfg.reward_workers)]
    return ActorGroups(learner, RolloutGroup(rollouts), RewardGroup(rewards))


def save_rank_placement(run_dir: Path, learner: LearnerGroup) -> None:
    """<run_dir>/learner_ranks.json: where each learner rank runs (rank, pid, ip, node id)."""
    if learner.ranks:
        (run_dir / "learner_ranks.json").write_text(json.dumps(learner.ranks, indent=2))


def make_sampler(cfg: MathRLConfig, prompts: list[dict], learner: Callable[[], LearnerGroup]) -> Any:
    """The prompt sampler; SPO's asks the learner group of the moment (`learner()`: a restart makes a new one)."""
    seed = derive_seed(cfg.seed, "prompts")
    if cfg.algo == "spo":
        return WeightedSampler([p["key"] for p in prompts], seed, lambda keys: learner().sampling_weights(keys))
    return ShuffleSampler(len(prompts), seed)


def init_spo_tracker(driver: RLDriver, actors: ActorGroups, samples: int) -> None:
    """Offline tracker init: `samples` samples per prompt with the starting policy."""
    import ray

    scored = driver.launch([dict(p, uid=i) for i, p in enumerate(driver.prompts)], {"n": samples}, stream="spo-init")
    rewards_by_key: dict[str, list[float]] = {}
    for g in ray.get([summarize_groups.remote(r) for r in scored]):
        for key, rs in g.items():
            rewards_by_key.setdefault(key, []).extend(rs)
    actors.learner.init_tracker(rewards_by_key)


def start_live_view(cfg: MathRLConfig, prep: Prepared) -> Any:
    """The serving app on this run's Ray cluster, on the starting policy; the driver pushes new weights."""
    from serving.app import start

    # the replica shares the cores with the actors: no CPU reservation, so it never blocks scheduling
    served = start(model=prep.init_dir, tokenizer=prep.tokenizer_dir, host=cfg.serve_host, port=cfg.serve_port,
                   num_cpus=0.0)
    print(f"[serve] chat with the policy while it trains: {served.url}  (OpenAI API at {served.url}/v1)", flush=True)
    return served


def check_start(cfg: MathRLConfig) -> str:
    """What can be checked before anything is read, written or started; returns the checkpoint folder."""
    run_dir = Path(cfg.run_dir)
    check_run_folder(run_dir, cfg.resume, cfg.overwrite)
    for flag in ("dataset", "test_dataset"):
        if getattr(cfg, flag):
            check_data_path(getattr(cfg, flag), "--" + flag.replace("_", "-"))
    if cfg.init:
        check_checkpoint_path(cfg.init, "--init")
    if cfg.reward.rm_path and cfg.reward.rm_weight:   # loaded by the reward actors: checked here first
        check_checkpoint(cfg.reward.rm_path, kind="score")
    check_record_dir(cfg)
    if not cfg.address:   # a cluster may have the GPU this machine lacks
        check_device(cfg.device)
    ckpt_dir = str((run_dir / "checkpoint").resolve())
    if cfg.resume and find_checkpoint(ckpt_dir) is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
    if cfg.prometheus:
        if cfg.address:
            raise ValueError("--prometheus starts a Prometheus for a local Ray; on a cluster use Ray's own "
                             "(`ray metrics launch-prometheus` on the head node)")
        prometheus_binary()
    if cfg.plot_every < 0:
        raise ValueError(f"--plot-every={cfg.plot_every} must be >= 0")
    return ckpt_dir


def stopped(reason: str, ckpt_dir: str, step: int) -> RunStopped:
    """The run ended early: say where it stopped and where --resume continues."""
    return RunStopped(f"{reason}; the run stopped after step {step}: "
                      f"{resume_hint(ckpt_dir, '--driver.checkpoint-every N')}")


def run_math_rl(cfg: MathRLConfig, prepare_fn: Callable[[Any], Prepared] = prepare,
                start_fn: Callable[[Any, Prepared, str], ActorGroups] = start_actors) -> dict[str, Any]:
    """The whole run; `prepare_fn` / `start_fn` replace the data preparation and the actor start-up
    (recipes.tools_rl: tool-use prompts and multi-turn rollout workers)."""
    import ray

    cfg = cfg.resolved()   # the settings left to the run, made explicit (config.json records them)
    t_start = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    ckpt_dir = check_start(cfg)
    prep = prepare_fn(cfg)
    reaper = init_ray(cfg.address, cfg.dashboard, cfg.dashboard_host, overlapping=cfg.driver.off_policy)
    device = resolve_device(cfg.device)
    actors = start_fn(cfg, prep, device)
    print_placement(actors.named())
    prometheus = None
    if cfg.prometheus:
        prometheus = start_prometheus(ray_targets(), run_dir, cfg.prometheus_port)
        if reaper is not None:
            reaper.watch([prometheus.proc.pid])
    # the run has started for real (data read, policy found, actors up): only now may the earlier results go
    start_fresh(run_dir, cfg.resume)
    (run_dir / "config.json").write_text(json.dumps({"algo": cfg.algo, **config_to_dict(cfg)}, indent=2))
    start_recording(cfg, prep.init_dir, prep.tokenizer_dir)
    logger = MetricsLogger(run_dir, total_steps=cfg.driver.steps, desc=cfg.algo, enable_progress=cfg.progress,
                           ray_metrics=True)
    sampler = make_sampler(cfg, prep.train_prompts, lambda: actors.learner)
    served = start_live_view(cfg, prep) if cfg.serve else None
    watcher = CollapseWatcher()

    def on_step(step: int, stats: dict) -> None:
        logger.log(step, **{k: v for k, v in stats.items() if k not in ("step", "time")})
        for message in watcher.update(step, stats):
            logger.warn(message)
        if cfg.plot_every and step % cfg.plot_every == 0:
            plot_curves(logger.path, run_dir / "curves.png", RL_CURVES, title=f"{cfg.algo} on math")
        if served is not None and driver.version % cfg.serve_every == 0:
            served.load_weights(driver.weights_ref, driver.version, wait=False)

    def on_restore(step: int) -> None:   # a new learner group went back to the checkpoint of `step`
        logger.drop_after(step)
        save_rank_placement(run_dir, actors.learner)

    driver = RLDriver(cfg.driver, actors, prep.train_prompts, prep.eval_prompts, sampler, seed=cfg.seed,
                      on_step=on_step, checkpoint_dir=ckpt_dir, restarts=cfg.learner.restarts,
                      on_restore=on_restore)
    save_rank_placement(run_dir, actors.learner)
    max_new = cfg.rollout.sampling.max_new_tokens
    try:
        if cfg.resume:
            driver.load_state_dict(actors.learner.load_checkpoint(ckpt_dir))
            logger.drop_after(driver.step_count)
            before = driver.extra.get("before", {})
            print(f"[resume] continuing at step {driver.step_count} from {ckpt_dir}")
        else:
            if cfg.algo == "spo":
                init_spo_tracker(driver, actors, cfg.init_samples)
            t0 = time.perf_counter()
            before = driver.evaluate(max_new, cfg.eval_samples)
            if before:
                print(f"[eval] before {cfg.algo}: held-out accuracy greedy {before['eval_accuracy']:.3f}"
                      + (f", sampled {before['eval_sampled_accuracy']:.3f}" if cfg.eval_samples else "")
                      + f" on {len(prep.eval_prompts)} prompts ({time.perf_counter() - t0:.1f}s)")
            for name, prompts in prep.extra_evals.items():
                before.update(driver.evaluate(max_new, cfg.eval_samples, prompts, name))
            if before:
                logger.log(0, **before)
            driver.extra["before"] = before
        first_step = driver.step_count
        t_rl = time.perf_counter()
        history = driver.run()
        rl_s = time.perf_counter() - t_rl
        after = driver.evaluate(max_new, cfg.eval_samples)
        for name, prompts in prep.extra_evals.items():
            after.update(driver.evaluate(max_new, cfg.eval_samples, prompts, name))
        if after:
            logger.log(driver.step_count, **after)
        state = ray.get(driver.weights_ref)
        if served is not None:   # the final policy, acknowledged by every replica before the run ends
            served.load_weights(driver.weights_ref, driver.version, wait=True)
            print(f"[serve] policy version {driver.version} loaded by {served.running_replicas()} replica(s)")
        memory = actors_peak_memory(actors)
    except ray.exceptions.RayActorError as e:
        raise stopped(actor_death(e), ckpt_dir, driver.step_count) from e
    except LearnerFailed as e:
        raise stopped(str(e), ckpt_dir, driver.step_count) from e
    except KeyboardInterrupt as e:
        err = stopped(f"interrupted ({e or 'Ctrl-C'})", ckpt_dir, driver.step_count)
        err.exit_code = 130
        raise err from e
    finally:
        if served is not None:
            served.shutdown()
        logger.close()
        ray.shutdown()
        if prometheus is not None:
            prometheus.stop()
    policy = load_model(prep.init_dir, **cfg.pth.kwargs())
    policy.load_state_dict(state)
    final = save_model(policy, run_dir / "final", extra_meta={"algo": cfg.algo})
    MiniMindTokenizer.load(prep.tokenizer_dir).save(final)
    plot_curves(logger.path, run_dir / "curves.png", RL_CURVES, title=f"{cfg.algo} on math")
    summary = summarize_run(cfg, before, after, history, first_step, rl_s, time.perf_counter() - t_start,
                            data=prep.data)
    summary["peak_memory_mb"] = memory
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    return summary


def cli_main(config_cls: type[MathRLConfig], argv: list[str] | None = None) -> dict[str, Any]:
    """What experiments/<algo>_math.py main() does."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_config(config_cls, argv)
    # Ctrl-C (and SIGTERM, see init_ray): KeyboardInterrupt in the driver, so `finally` shuts Ray down
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return run_or_exit(lambda: run_math_rl(cfg))
