"""Learner update throughput with 1 and 2 data-parallel ranks on the same GRPO batch (learner.group).

The product path: `LearnerGroup.start` (Ray actors, gloo on CPU / NCCL on CUDA) with the learner
`recipes.math_rl.make_learner` builds for the default GRPO recipe (policy + frozen reference, AdamW, one
update per batch, micro-batches of 64 rows), fed one scored batch cut as the reward actors cut it
(`RolloutBatch.shard`: whole groups per rank, each rank fetching only its part). A step = one
`train_step`: reference logprobs + forward/backward of the policy + the gradient all-reduce + AdamW.
The batch: --prompts x --group rows of random prompt tokens (--prompt-len) and responses of
--new-tokens tokens, rewards 0/1 (some groups without signal, as in real batches).

On CPU the cores are split evenly: world size 1 gets every core as torch threads, world size 2 gets
cores / 2 threads per rank (what `--learner.world-size 2` does). On CUDA (a device with >= 2 GPUs for
world size 2) each rank takes one GPU.

Reports per world size: seconds per step (median of --repeats after --warmup), samples/s, tokens/s
(prompt + response tokens the learner processes), each rank's step time and its time in collectives
(the all-reduce share of a step), and the speedup of 2 ranks over 1.

Usage: python -m bench.learner_scaling [--preset demo] [--prompts 32] [--group 8] [--new-tokens 40]
       [--prompt-len 30] [--repeats 3] [--warmup 1] [--device cpu|cuda] [--quick] [--append]
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


import torch

from bench.common import base_parser, emit, environment, log, median, setup
from learner.distributed import LearnerGroupConfig
from learner.group import LearnerGroup
from minimind.checkpoint import save_model
from minimind.config import preset
from minimind.model import MiniMindForCausalLM
from contract.batch import RolloutBatch
from recipes.rl_config import GRPOMathConfig
from recipes.math_rl import make_learner
from recipes.ray_session import init_ray, placement


def make_batch(prompts: int, group: int, prompt_len: int, new_tokens: int, vocab: int, seed: int) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    B = prompts * group
    rewards = (torch.rand(B, generator=g) < 0.6).float()
    rewards[:group] = 1.0   # a group without signal, as the filterless default keeps them
    return RolloutBatch(
        prompt_ids=torch.randint(3, vocab, (B, prompt_len), generator=g), prompt_mask=torch.ones(B, prompt_len, dtype=torch.long),
        response_ids=torch.randint(3, vocab, (B, new_tokens), generator=g), response_mask=torch.ones(B, new_tokens),
        logprobs=-torch.rand(B, new_tokens, generator=g), group_uid=torch.arange(prompts).repeat_interleave(group),
        prompt_keys=[f"p{i // group}" for i in range(B)], answers=[""] * B, response_text=[""] * B, rewards=rewards)


def time_world(world: int, init: Path, batch: RolloutBatch, args) -> dict:
    import ray

    cfg = GRPOMathConfig(init=str(init), device=args.device, learner=LearnerGroupConfig(world_size=world))
    cores = os.cpu_count() or 1
    res = placement(args.device, 1, 1, False, world)["learner"]
    group = LearnerGroup.start(lambda: make_learner(cfg, init, args.device), cfg.learner, args.device, res,
                               threads=max(1, cores // world))
    try:
        parts = [[ray.put(p) for p in batch.shard(world)]]
        times, ranks, comm = [], [], []
        for i in range(args.warmup + args.repeats):
            for a in group.actors:   # every rank notes the publication: the batch is on-policy
                a.weights.remote(i)
            stats = group.train_step(parts)
            if i >= args.warmup:
                times.append(stats["learn_seconds"])
                ranks.append([stats.get(f"learn_seconds_rank{r}", stats["learn_seconds"]) for r in range(world)])
                comm.append(stats.get("allreduce_seconds", 0.0))
        step = median(times)
        rows, tokens = len(batch), float(batch.attention_mask.sum())
        return {"world_size": world, "threads_per_rank": max(1, cores // world), "seconds_per_step": step,
                "samples_per_second": rows / step, "tokens_per_second": tokens / step,
                "rank_seconds": [median([r[k] for r in ranks]) for k in range(world)],
                "allreduce_seconds": median(comm), "allreduce_share": median(comm) / step,
                "steps_timed": args.repeats}
    finally:
        group.shutdown()


def main() -> None:
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--preset", default="demo", help="model preset (minimind2-small for the GPU target)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=30)
    p.add_argument("--new-tokens", type=int, default=40)
    p.add_argument("--vocab", type=int, default=512, help="model vocabulary (the demo tokenizer's size)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (world size 2 then needs 2 GPUs)")
    args = p.parse_args()
    setup(args)
    if args.quick:
        args.prompts, args.new_tokens = 8, 16
    init_ray(None, dashboard=False, dashboard_host="127.0.0.1", overlapping=False)
    batch = make_batch(args.prompts, args.group, args.prompt_len, args.new_tokens, args.vocab, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(args.seed)
        model = MiniMindForCausalLM(preset(args.preset, vocab_size=args.vocab))
        save_model(model, Path(tmp) / "init")
        log(f"[learner_scaling] {args.preset}: {model.num_parameters() / 1e6:.2f}M parameters, batch "
            f"{args.prompts}x{args.group} rows, {args.prompt_len}+{args.new_tokens} tokens")
        sides = {}
        for world in (1, 2):
            sides[world] = time_world(world, Path(tmp) / "init", batch, args)
            log(f"[learner_scaling] world size {world}: {sides[world]['seconds_per_step']:.3f} s/step")
    speedup = sides[1]["seconds_per_step"] / sides[2]["seconds_per_step"]
    emit({"bench": "learner_scaling", "env": environment(), "device": args.device, "preset": args.preset,
          "batch": {"rows": len(batch), "prompt_len": args.prompt_len, "new_tokens": args.new_tokens},
          "cores": os.cpu_count(), "split": "world size 1: all cores as threads; 2: cores/2 threads per rank",
          "results": [sides[1], sides[2]], "speedup_2_over_1": speedup}, args.append)


if __name__ == "__main__":
    main()
