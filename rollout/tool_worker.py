"""ToolRolloutWorker: a RolloutWorker whose episodes are multi-turn conversations with an environment
(tools), batched across episodes (rollout.multiturn). Same weights protocol and call signature as
RolloutWorker, so the driver and the actor groups drive it unchanged.

    worker = ToolRolloutActor.remote(RolloutConfig(...), model_cfg, tok_dir, env=ToolEnv(registry),
                                     env_cfg=EnvConfig(max_turns=3))
    batch_ref = worker.generate.remote(prompts, [weights_ref], version, seed)

Prompts: {"messages": [chat before the first assistant turn], "key", "answer", "uid", "tools": bool}
(`tools` False: the same question without the tools, answered in one turn).
"""
from __future__ import annotations

import ray

from minimind.config import MiniMindConfig
from minimind.generate import SamplingParams

from .env.environment import Environment
from .multiturn import EnvConfig, episodes_to_batch, run_episodes
from .worker import RolloutConfig, RolloutWorker


class ToolRolloutWorker(RolloutWorker):
    def __init__(self, cfg: RolloutConfig, model_cfg: MiniMindConfig | dict, tokenizer_dir: str,
                 env: Environment, env_cfg: EnvConfig | None = None, device: str | None = None,
                 worker_index: int = 0, threads: int = 0):
        super().__init__(cfg, model_cfg, tokenizer_dir, device=device, worker_index=worker_index, threads=threads)
        self.env = env
        self.env_cfg = env_cfg or EnvConfig()

    def rollout(self, prompts: list[dict], params: SamplingParams, version: int, row_base: int):
        """One batch of episodes (every turn of every prompt's n episodes, batched across episodes)."""
        episodes, stats = run_episodes(self.engine, self.tok, self.env, prompts, params, self.env_cfg)
        rep = lambda xs: [x for x in xs for _ in range(params.n)]  # noqa: E731  (row = prompt i, sample j)
        return episodes_to_batch(
            episodes, self.tok, rep([int(p["uid"]) for p in prompts]), rep([p["key"] for p in prompts]),
            rep([p.get("answer", "") for p in prompts]), params.temperature, version,
            meta={**stats, "worker": self.index, "engine": self.engine.name}, row_base=row_base)


ToolRolloutActor = ray.remote(ToolRolloutWorker)
