"""One GRPO step: ours on Ray (learner / rollout / reward actors, RLDriver's calls) vs TRL's GRPOTrainer.

Same random-init weights (ours -> minimind.checkpoint.save_model for our learner, export_hf ->
AutoModelForCausalLM for TRL), same prompts (built-in synthetic math, chat-templated), same reward
(reward.verifier: math_reward + 0.1 * format_reward = our default RewardConfig), same group size G,
prompts per step, response length (stop tokens disabled: every row has exactly --new-tokens),
temperature 1 (top_k 0, top_p 1), KL beta, clip (0.2 / 0.28), token-mean loss, AdamW
(lr 5e-5 constant, betas (0.9, 0.95), wd 0, clip 1.0), fp32, and the same number of optimizer
updates per batch (ours: epochs x minibatches; TRL: steps_per_generation = minibatches,
num_iterations = epochs, per_device_train_batch_size = rows / minibatches). Both recompute old
logprobs and reference logprobs before the updates.

Ours: LearnerActor (recipes.math_rl.make_learner), one RolloutActor, one RewardActor with
recipes.ray_session.placement() CPU shares and threads = all cores (as start_actors), on a local Ray
(`ray.init(address="local", num_cpus=2)`). A step is the body of RLDriver.run() in steady state:
publish weights (learner.weights.remote) -> rollout.generate (waits for that ref, loads it) ->
reward.score -> learner.train_step; the driver only moves refs and gets stats.

Breakdown (seconds and share of the step's wall time, medians over the timed steps):
weight_sync (rollout set_weights: wait for the learner's weights(), fetch, load_state_dict),
generate (engine time), reward (scorer time), reference (ref-model logprobs, inside learn),
learn (train_step minus reference: old logprobs + updates), ray_overhead = wall - sum of those
phases measured inside the actors on the critical path (scheduling, object transfer, argument
(de)serialisation, plus the actors' non-phase Python: tokenise/decode, batch building).

TRL: GRPOTrainer in this process (use_cpu, no vLLM, bf16 off, gradient checkpointing off, as ours).
A "step" is one generation cycle = steps_per_generation optimizer steps (the same 64 rows, the same
number of updates). Steps are interleaved: a TrainerCallback runs one of our steps at every cycle
boundary, so ratio[i] = ours_i / trl_i is measured back to back. The first --warmup cycles of
each side are not timed.

Usage: python -m bench.grpo_step [--quick] [--append] [--presets tiny,demo] [--prompts 8] [--group 8]
       [--new-tokens 64] [--minibatches 2] [--epochs 1] [--beta 0.01] [--repeats 3] [--warmup 1] [--no-trl]
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

# Before torch loads OpenMP: the wait policy our actors use when processes take turns on the cores
# (bounded spinning; runtime/process.py), for both sides. OMP_WAIT_POLICY / GOMP_SPINCOUNT override it.
from runtime import openmp_env, set_openmp_env

set_openmp_env(overlapping=False)

import torch

from bench.common import PeakRSS, base_parser, emit, environment, log, max_rss_mb, median, setup
from minimind.checkpoint import export_hf, save_model
from minimind.config import preset
from minimind.data import synthetic_math as sm
from minimind.data.datasets import RLPromptDataset
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import train_tokenizer
from reward.verifier import format_reward, math_reward
from rollout.worker import RolloutWorker

LR = 5e-5
PHASES = ["weight_sync", "generate", "reward", "reference", "learn"]


# --------------------------------------------------------------------------- shared inputs
def tokenizer_corpus(max_chars: int = 6_000_000) -> list[str]:
    """Synthetic math text + the Python standard library's sources (sorted, deterministic): enough
    text for a 6400-token byte-level BPE (the math data alone gives ~450 tokens)."""
    texts = sm.pretrain_texts(sm.generate_problems(2000, seed=0, split="train"))
    stdlib = Path(os.__file__).parent
    total = sum(map(len, texts))
    for f in sorted(stdlib.glob("*.py")):
        if total >= max_chars:
            break
        try:
            t = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(t)
        total += len(t)
    return texts


def math_prompts(n: int, seed: int) -> list[dict]:
    return RLPromptDataset(sm.rl_records(sm.generate_problems(n, seed, "train"))).driver_prompts()


def rule_reward(response: str, answer: str) -> float:
    """= our default RewardConfig (math_weight 1, format_weight 0.1, answer_mode auto)."""
    return math_reward(response, answer) + 0.1 * format_reward(response)


# --------------------------------------------------------------------------- our side
class NoStopRolloutWorker(RolloutWorker):
    """The product's RolloutWorker with the stop token disabled (every row gets exactly
    max_new_tokens, as TRL's side with eos_token_id=None). Everything else is the product's."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        engine_generate = self.engine.generate

        def generate_no_stop(token_lists, params, pad_id):
            return engine_generate(token_lists, dataclasses.replace(params, stop_token_ids=()), pad_id)

        self.engine.generate = generate_no_stop


def actor_memory(actor) -> dict:
    import ray

    def probe(self):
        import os as _os
        import sys
        import resource as _r
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * _os.sysconf("SC_PAGE_SIZE") / 2**20
        alloc = sys.modules.get("runtime.process")
        return {"pid": _os.getpid(), "peak_rss_mb": round(_r.getrusage(_r.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "rss_mb": round(rss, 1), "malloc_tuned": bool(alloc and alloc.tune_malloc())}

    return ray.get(actor.__ray_call__.remote(probe), timeout=120)


class Ours:
    """Learner / rollout / reward actors as recipes.math_rl.start_actors builds them (rollout:
    NoStopRolloutWorker), driven with RLDriver's own methods."""

    def __init__(self, args, init_dir: Path, tok_dir: Path, prompts: list[dict]):
        import ray

        from learner.actor import LearnerActor
        from learner.config import OptimConfig
        from learner.losses import ClipConfig, GRPOLoss, KLConfig
        from learner.stages import RLUpdateConfig
        from minimind.generate import SamplingParams
        from reward.actor import RewardActor, RewardConfig
        from learner.group import LearnerGroup
        from recipes.actors import ActorGroups, RewardGroup, RolloutGroup
        from recipes.rl_config import GRPOMathConfig
        from recipes.driver import DriverConfig, RLDriver
        from recipes.ray_session import placement
        from recipes.math_rl import make_learner, policy_config
        from recipes.samplers import ShuffleSampler
        from rollout.worker import RolloutConfig

        cfg = GRPOMathConfig(
            init=str(init_dir), tokenizer=str(tok_dir), threads=0, seed=args.seed,
            optim=OptimConfig(lr=LR, warmup_steps=0, total_steps=10**6, min_lr_ratio=1.0, weight_decay=0.0,
                              beta1=0.9, beta2=0.95, grad_clip=1.0),
            rollout=RolloutConfig(SamplingParams(n=args.group, max_new_tokens=args.new_tokens, temperature=1.0,
                                                 top_p=1.0, top_k=0)),
            reward=RewardConfig(),  # math 1.0 + format 0.1 (rule_reward)
            driver=DriverConfig(steps=10**6, prompts_per_step=args.prompts),
            update=RLUpdateConfig(epochs=args.epochs, minibatches=args.minibatches),
            grpo=GRPOLoss(clip=ClipConfig(eps_low=0.2, eps_high=0.28, agg_mode="token-mean"),
                          kl=KLConfig(coef=args.beta), adv_scale="group"))
        self.cfg = cfg
        res = placement("cpu", 1, 1, reward_on_gpu=False)
        threads = os.cpu_count() or 1
        model_cfg = policy_config(init_dir).to_dict()  # as start_actors: config.json, no weights
        self.learner = LearnerActor.options(name="bench-learner", **res["learner"]).remote(
            lambda: make_learner(cfg, init_dir, "cpu"), threads=threads)
        restart = dict(max_restarts=3, max_task_retries=3)
        self.rollout = ray.remote(NoStopRolloutWorker).options(name="bench-rollout-0", **res["rollout"], **restart) \
            .remote(cfg.rollout, model_cfg, str(tok_dir), device="cpu", worker_index=0, threads=threads)
        self.reward = RewardActor.options(name="bench-reward-0", **res["reward"], **restart).remote(cfg.reward)
        ray.get([self.learner.version.remote(), self.rollout.ping.remote(), self.reward.ping.remote()], timeout=300)
        groups = ActorGroups(LearnerGroup([self.learner]), RolloutGroup([self.rollout]), RewardGroup([self.reward]))
        self.driver = RLDriver(cfg.driver, groups, prompts, [], ShuffleSampler(len(prompts), args.seed), args.seed)
        self.rows = args.prompts * args.group
        self.steps: list[dict] = []

    def step(self) -> dict:
        """One RLDriver step, on-policy: train on the batch in flight, publish weights, launch the next
        rollout -> reward (the first call launches its own batch first)."""
        stats = self.driver.step()
        wall = stats["step_seconds"]
        assert stats["rows"] == self.rows and stats["response_length"] == self.cfg.rollout.sampling.max_new_tokens, stats
        ref = float(stats.get("reference_seconds", 0.0))
        ph = {"weight_sync": stats["weight_sync_seconds"], "generate": stats["generate_seconds"],
              "reward": stats["reward_seconds"], "reference": ref, "learn": stats["learn_seconds"] - ref}
        ph["ray_overhead"] = wall - sum(ph.values())
        rec = {"wall": wall, **ph, "updates": stats["updates"], "reward_mean": stats["reward_mean"],
               "logprob_gap": stats["logprob_gap"], "has_reference_timer": "reference_seconds" in stats}
        self.steps.append(rec)
        return rec

    def memory(self) -> dict:
        return {"learner": actor_memory(self.learner), "rollout": actor_memory(self.rollout),
                "reward": actor_memory(self.reward)}

    def close(self) -> None:
        import ray

        for a in (self.learner, self.rollout, self.reward):
            ray.kill(a)


# --------------------------------------------------------------------------- TRL side
class TRLProfile:
    """Collects TRL's own profiling_context timings (it only sends them to wandb/mlflow)."""

    def __init__(self):
        self.sums: dict[str, float] = {}

    def install(self):
        from trl.extras import profiling

        orig = profiling.ProfilingContext._log_metrics
        sums = self.sums

        def _log_metrics(ctx, duration):
            sums[ctx.name] = sums.get(ctx.name, 0.0) + duration
            return orig(ctx, duration)

        profiling.ProfilingContext._log_metrics = _log_metrics

    def take(self) -> dict[str, float]:
        out = dict(self.sums)
        self.sums.clear()
        return out


def trl_reward(completions, answer, **kwargs):
    return [rule_reward(c, a) for c, a in zip(completions, answer)]


def run_interleaved(args, hf_dir: Path, prompts: list[dict], ours: Ours | None, out_dir: Path) -> dict:
    """TRL trains warmup+repeats cycles; at each cycle boundary one of our steps runs (timed
    separately). Without TRL (--no-trl) our steps just run back to back."""
    n_cycles = args.warmup + args.repeats
    if args.no_trl:
        for _ in range(n_cycles):
            ours.step()
        return {}

    import datasets
    import transformers
    import trl
    from transformers import TrainerCallback

    rows = args.prompts * args.group
    if rows % args.minibatches:
        raise SystemExit(f"rows {rows} not divisible by minibatches {args.minibatches}")
    spg = args.minibatches
    gcfg = trl.GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=rows // args.minibatches, gradient_accumulation_steps=1,
        steps_per_generation=spg, num_iterations=args.epochs, num_generations=args.group,
        max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"eos_token_id": None},  # never stop early: exactly max_completion_length
        beta=args.beta, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, max_steps=spg * n_cycles * args.epochs,
        logging_steps=10**6, report_to="none", save_strategy="no", disable_tqdm=True, seed=args.seed,
        dataloader_num_workers=0, shuffle_dataset=False, log_completions=False)
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    ds = datasets.Dataset.from_list([{"prompt": p["prompt"], "answer": p["answer"]} for p in prompts])
    trainer = trl.GRPOTrainer(model=model, reward_funcs=trl_reward, args=gcfg, train_dataset=ds,
                              processing_class=tok)
    prof = TRLProfile()
    prof.install()
    cycle_steps = spg * args.epochs  # optimizer steps per generation batch

    class Interleave(TrainerCallback):
        def __init__(self):
            self.cycles: list[dict] = []
            self.resume = None
            self.peak = PeakRSS()

        def on_train_begin(self, a, state, control, **kw):
            self.peak.__enter__()
            self.resume = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step % cycle_steps:
                return
            now = time.perf_counter()
            self.cycles.append({"wall": now - self.resume, "profile": prof.take()})
            log(f"    trl cycle {len(self.cycles)}: {self.cycles[-1]['wall']:.2f}s")
            if ours is not None:
                r = ours.step()
                log(f"    ours step {len(ours.steps)}: {r['wall']:.2f}s (ray overhead {r['ray_overhead']:.3f}s)")
            self.resume = time.perf_counter()

        def on_train_end(self, a, state, control, **kw):
            self.peak.__exit__(None, None, None)

    cb = Interleave()
    trainer.add_callback(cb)
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its summary dict: keep stdout one JSON line
        trainer.train()
    return {"cycles": cb.cycles, "peak_rss_mb": round(cb.peak.peak_mb, 1), "config": {
        "trl_version": trl.__version__, "per_device_train_batch_size": gcfg.per_device_train_batch_size,
        "gradient_accumulation_steps": gcfg.gradient_accumulation_steps,
        "steps_per_generation": gcfg.steps_per_generation, "generation_batch_size": gcfg.generation_batch_size,
        "num_iterations": gcfg.num_iterations, "num_generations": gcfg.num_generations,
        "max_completion_length": gcfg.max_completion_length, "beta": gcfg.beta, "epsilon": gcfg.epsilon,
        "epsilon_high": gcfg.epsilon_high, "loss_type": gcfg.loss_type, "scale_rewards": gcfg.scale_rewards,
        "temperature": gcfg.temperature, "top_k": gcfg.top_k, "top_p": gcfg.top_p, "use_vllm": gcfg.use_vllm,
        "use_cpu": gcfg.use_cpu, "bf16": gcfg.bf16, "gradient_checkpointing": gcfg.gradient_checkpointing,
        "learning_rate": gcfg.learning_rate, "lr_scheduler_type": str(gcfg.lr_scheduler_type),
        "max_grad_norm": gcfg.max_grad_norm, "adam_betas": [gcfg.adam_beta1, gcfg.adam_beta2],
        "optimizer_steps_per_cycle": cycle_steps}}


# --------------------------------------------------------------------------- report
def summarize_ours(steps: list[dict]) -> dict:
    wall = median([s["wall"] for s in steps])
    br = {}
    for k in PHASES + ["ray_overhead"]:
        sec = median([s[k] for s in steps])
        br[k] = {"seconds": round(sec, 4), "share": round(sec / wall, 4)}
    return {"wall_s": round(wall, 4), "wall_s_all": [round(s["wall"], 4) for s in steps], "breakdown": br,
            "ray_overhead_share_all": [round(s["ray_overhead"] / s["wall"], 4) for s in steps],
            "updates_per_step": steps[-1]["updates"], "logprob_gap": max(s["logprob_gap"] for s in steps),
            "reward_mean": round(sum(s["reward_mean"] for s in steps) / len(steps), 4),
            "reference_timer": steps[-1]["has_reference_timer"]}


def summarize_trl(cycles: list[dict]) -> dict:
    wall = median([c["wall"] for c in cycles])
    names = sorted({k for c in cycles for k in c["profile"]})
    prof = {n.replace("GRPOTrainer.", ""): round(median([c["profile"].get(n, 0.0) for c in cycles]), 4)
            for n in names}
    return {"wall_s": round(wall, 4), "wall_s_all": [round(c["wall"], 4) for c in cycles],
            "profile_s": prof}


def bench_preset(name: str, args, tmp: Path, tok, tok_dir: Path, prompts: list[dict]) -> dict:
    torch.manual_seed(args.seed)
    model = MiniMindForCausalLM(preset(name, vocab_size=tok.vocab_size))
    init_dir = save_model(model, tmp / name / "init")
    tok.save(init_dir)
    hf_dir = export_hf(model, tmp / name / "hf", tokenizer_dir=tok_dir)
    log(f"[{name}] {model.num_parameters() / 1e6:.2f}M params; {args.prompts} prompts x G={args.group}, "
        f"{args.new_tokens} new tokens, {args.epochs}x{args.minibatches} updates")
    ours = Ours(args, Path(init_dir), tok_dir, prompts)
    try:
        trl_res = run_interleaved(args, hf_dir, prompts, ours, tmp / name / "trl")
        mem = ours.memory()
    finally:
        ours.close()
    w = args.warmup
    o = summarize_ours(ours.steps[w:])
    row = {"preset": name, "params_m": round(model.num_parameters() / 1e6, 3), "vocab": tok.vocab_size,
           "prompts": args.prompts, "G": args.group, "rows": args.prompts * args.group,
           "new_tokens": args.new_tokens, "epochs": args.epochs, "minibatches": args.minibatches,
           "beta": args.beta, "ours": o,
           "ray_overhead_share": o["breakdown"]["ray_overhead"]["share"],
           "ours_peak_rss_mb": {k: v["peak_rss_mb"] for k, v in mem.items()}, "ours_actor_memory": mem}
    if trl_res:
        t = summarize_trl(trl_res["cycles"][w:])
        per = [s["wall"] / c["wall"] for s, c in zip(ours.steps[w:], trl_res["cycles"][w:])]
        row.update(trl=t, trl_config=trl_res["config"], trl_peak_rss_mb=trl_res["peak_rss_mb"],
                   ratio_wall=round(median(per), 3), ratios=[round(x, 3) for x in per])
        log(f"    ours {o['wall_s']}s/step, TRL {t['wall_s']}s/step, ratio ours/TRL {row['ratio_wall']}, "
            f"ray overhead {row['ray_overhead_share']:.1%}")
    else:
        log(f"    ours {o['wall_s']}s/step, ray overhead {row['ray_overhead_share']:.1%}")
    return row


def main() -> None:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--presets", default=None, help="default tiny,demo (quick: tiny)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="G completions per prompt")
    p.add_argument("--new-tokens", type=int, default=64, help="response length (stop tokens disabled)")
    p.add_argument("--epochs", type=int, default=1, help="passes over each batch (TRL num_iterations)")
    p.add_argument("--minibatches", type=int, default=2, help="optimizer updates per epoch (TRL steps_per_generation)")
    p.add_argument("--beta", type=float, default=0.01, help="KL coefficient (ours kl_coef, TRL beta)")
    p.add_argument("--vocab", type=int, default=6400, help="tokenizer (and model) vocabulary")
    p.add_argument("--no-trl", action="store_true", help="only our side")
    p.add_argument("--trl-malloc-tuned", action="store_true",
                   help="also give TRL's process (this one) our actors' malloc tuning (runtime/process.py)")
    args = p.parse_args()
    setup(args)
    presets = (args.presets or ("tiny" if args.quick else "tiny,demo")).split(",")
    if args.quick:
        args.warmup = min(args.warmup, 1)

    import ray

    trl_malloc = False
    if args.trl_malloc_tuned:
        from runtime import tune_malloc
        trl_malloc = tune_malloc()
    t0 = time.perf_counter()
    tok = train_tokenizer(tokenizer_corpus(), vocab_size=args.vocab)
    log(f"tokenizer: vocab {tok.vocab_size} ({time.perf_counter() - t0:.1f}s)")
    n_prompts = args.prompts * (args.warmup + args.repeats) + args.prompts
    prompts = math_prompts(max(n_prompts, 64), args.seed)
    env = {"env_vars": openmp_env(overlapping=False)}  # what set_openmp_env put in this process
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
             runtime_env=env)
    result = {"bench": "grpo_step", "quick": args.quick, "env": environment(), "repeats": args.repeats,
              "warmup": args.warmup, "trl_malloc_tuned": trl_malloc,
              "setup": {"model": "random init, fp32, CPU", "tokenizer": f"byte-level BPE vocab {tok.vocab_size} "
                        "trained on synthetic math + Python stdlib sources",
                        "prompts": "built-in synthetic math (chat-templated)",
                        "reward": "math_reward + 0.1 * format_reward (reward.verifier), both sides",
                        "sampling": "temperature 1, top_k 0, top_p 1, no stop token (exactly new_tokens)",
                        "optimizer": f"AdamW lr {LR} const, betas (0.9,0.95), wd 0, clip 1.0",
                        "loss": "clip 0.2/0.28, token-mean (TRL dapo), group-scaled advantages, k3 KL in loss",
                        "ours": "LearnerActor + RolloutActor + RewardActor, recipes.ray_session placement/threads, "
                                "local Ray (num_cpus = cores)"},
              "results": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tok_dir = tok.save(Path(tmp) / "tok")
            for name in presets:
                result["results"].append(bench_preset(name, args, Path(tmp), tok, tok_dir, prompts))
    finally:
        ray.shutdown()
    result["process_max_rss_mb"] = round(max_rss_mb(), 1)
    emit(result, args.append)


if __name__ == "__main__":
    main()
