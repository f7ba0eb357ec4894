"""Multi-turn rollouts: many episodes advance together, one engine call per turn for all live ones.

    turn 0    engine.generate(prompts, n=G)               every episode writes its first turn
    env       each turn with a tool call -> tool messages -> observation tokens (template glue)
    turn t    engine.generate(prompt ++ response so far)  only the episodes still live
    ...       up to `max_turns` assistant turns and `max_total_tokens` response tokens

An episode's response is every token after its prompt: the model's turns and, between them, the
observation tokens (the end of the assistant turn, the tool turn with its results, the next
assistant header), all rendered by the tokenizer's own chat template. The loss mask is 1 only on the
tokens the model sampled; the logprobs are the engine's on those and 0 elsewhere; `response_attn`
covers all of them, because the model read the observations when it wrote its next turn.

Engines are those of rollout.engines (native and vLLM): token lists in, GenerationOutput out. Each
turn re-sends the whole context: the native engine re-prefills it, vLLM reuses its prefix cache.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from minimind.generate import SamplingParams, left_pad
from contract.batch import RolloutBatch

from .env.environment import Environment


@dataclass
class EnvConfig:
    max_turns: int = 3
    """Assistant turns per episode (a tool call on the last one goes unanswered: the episode ends)."""
    max_total_tokens: int = 160
    """Token budget of the whole response: the model's turns plus the observations between them.
    Each turn also stops at --rollout.sampling.max-new-tokens."""
    tool_timeout_s: float = 2.0
    """Seconds one tool call may run before it becomes an error observation."""

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_total_tokens < 1:
            raise ValueError(f"--env.max-turns={self.max_turns} and --env.max-total-tokens="
                             f"{self.max_total_tokens} must be >= 1")
        if not self.tool_timeout_s > 0:
            raise ValueError(f"--env.tool-timeout-s={self.tool_timeout_s}: must be > 0")


@dataclass
class Episode:
    prompt: list[int]                  # the rendered prompt's tokens
    messages: list[dict]               # the conversation so far (prompt messages, turns, tool results)
    tools: list[dict] | None           # the tools announced in the prompt (None: answer without tools)
    tokens: list[int] = field(default_factory=list)      # response so far
    loss_mask: list[float] = field(default_factory=list) # 1 on sampled tokens
    logprobs: list[float] = field(default_factory=list)  # engine logprobs (0 on observations)
    turns: int = 0
    calls: int = 0
    errors: int = 0
    done: bool = False


def observation_text(tok: Any, history: list[dict], assistant_text: str, tool_messages: list[dict],
                     tools: list[dict] | None) -> str:
    """The text between the model's end-of-turn token and its next turn, as the chat template renders
    it: e.g. '\\n<|im_start|>user\\n<tool_response>\\n408\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n'."""
    turn = {"role": "assistant", "content": assistant_text}
    before = tok.apply_chat_template([*history, turn], tools=tools)
    after = tok.apply_chat_template([*history, turn, *tool_messages], add_generation_prompt=True, tools=tools)
    if not after.startswith(before):
        raise ValueError("the chat template renders a conversation differently once tool results follow it: "
                         "multi-turn rollouts need a template whose history is a prefix of the continued chat")
    eos = tok.id_to_token(tok.eos_id)
    end = before.rfind(eos)
    if end < 0 or assistant_text not in before[:end]:
        raise ValueError(f"the chat template does not end an assistant turn with the end-of-turn token {eos!r}")
    return before[end + len(eos):] + after[len(before):]


def run_episodes(engine: Any, tok: Any, env: Environment, prompts: list[dict], params: SamplingParams,
                 cfg: EnvConfig) -> tuple[list[Episode], dict[str, float]]:
    """`params.n` episodes per prompt ({"messages": [...], "tools": bool}), advanced turn by turn in
    one engine call per turn. Returns the episodes (row = prompt i, sample j) and timing stats."""
    t0 = time.perf_counter()
    schemas = env.tool_schemas()
    episodes, firsts = [], []
    for p in prompts:
        if "messages" not in p:
            raise ValueError(f"multi-turn prompt {p.get('key', '?')!r} has no 'messages' (the chat to continue)")
        tools = schemas if p.get("tools", True) and schemas else None
        ids = tok.encode(tok.apply_chat_template(list(p["messages"]), add_generation_prompt=True, tools=tools))
        firsts.append(ids)
        episodes += [Episode(ids, list(p["messages"]), tools) for _ in range(params.n)]
    stop = set(params.stop_token_ids)
    engine_calls = gen_s = env_s = 0.0
    turn = 0
    while True:
        live = [e for e in episodes if not e.done]
        if not live:
            break
        room = max(cfg.max_total_tokens - len(e.tokens) for e in live)
        seed = None if params.seed is None else (params.seed + 1_000_003 * turn) % 2**63
        tg = time.perf_counter()
        if turn == 0:   # each prompt prefilled once for its n episodes
            out = engine.generate(firsts, dataclasses.replace(params, max_new_tokens=min(params.max_new_tokens, room),
                                                              seed=seed), tok.pad_id)
        else:
            out = engine.generate([e.prompt + e.tokens for e in live],
                                  dataclasses.replace(params, n=1, seed=seed,
                                                      max_new_tokens=min(params.max_new_tokens, room)), tok.pad_id)
        gen_s += time.perf_counter() - tg
        engine_calls += 1
        te = time.perf_counter()
        lengths = out.response_mask.sum(-1).long().tolist()
        for r, e in enumerate(live):
            k = min(lengths[r], cfg.max_total_tokens - len(e.tokens))
            new = out.response_ids[r, :k].tolist()
            e.tokens += new
            e.loss_mask += [1.0] * k
            e.logprobs += out.logprobs[r, :k].tolist()
            e.turns += 1
            if not new or new[-1] not in stop or e.tools is None:
                e.done = True     # out of tokens, or answering without tools: one turn
                continue
            text = tok.decode(new)
            step = env.step(e.messages, text)
            e.calls += step.calls
            e.errors += step.errors
            if step.done or e.turns >= cfg.max_turns:
                e.done = True
                continue
            obs = tok.encode(observation_text(tok, e.messages, text, step.messages, e.tools))
            if len(e.tokens) + len(obs) >= cfg.max_total_tokens:
                e.done = True     # no room left to answer after the observation
                continue
            e.messages += [{"role": "assistant", "content": text}, *step.messages]
            e.tokens += obs
            e.loss_mask += [0.0] * len(obs)
            e.logprobs += [0.0] * len(obs)
        env_s += time.perf_counter() - te
        turn += 1
    return episodes, {"generate_seconds": time.perf_counter() - t0, "engine_seconds": gen_s,
                      "env_seconds": env_s, "engine_calls": engine_calls}


def episodes_to_batch(episodes: list[Episode], tok: Any, group_uid: list[int], keys: list[str],
                      answers: list[str], temperature: float, version: int,
                      meta: dict[str, Any] | None = None, row_base: int = 0) -> RolloutBatch:
    """The typed batch of finished episodes: prompts left-padded, responses right-padded."""
    prompt_ids, prompt_mask = left_pad([e.prompt for e in episodes], tok.pad_id)
    B, R = len(episodes), max(1, max(len(e.tokens) for e in episodes))
    ids = torch.full((B, R), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((B, R), dtype=torch.float32)
    attn = torch.zeros((B, R), dtype=torch.long)
    lps = torch.zeros((B, R), dtype=torch.float32)
    for i, e in enumerate(episodes):
        n = len(e.tokens)
        ids[i, :n] = torch.tensor(e.tokens, dtype=torch.long)
        mask[i, :n] = torch.tensor(e.loss_mask)
        attn[i, :n] = 1
        lps[i, :n] = torch.tensor(e.logprobs)
    count = lambda f: torch.tensor([getattr(e, f) for e in episodes], dtype=torch.long)  # noqa: E731
    info = dict(meta or {})
    info.update(new_tokens=int(mask.sum()), turns=float(count("turns").float().mean()),
                tool_calls=float(count("calls").float().mean()))
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=ids, response_mask=mask, logprobs=lps,
        group_uid=torch.tensor(group_uid, dtype=torch.long), prompt_keys=keys, answers=answers,
        response_text=tok.batch_decode([e.tokens for e in episodes]), temperature=temperature,
        policy_version=version, row_id=row_base + torch.arange(B), meta=info, response_attn=attn, turns=count("turns"), tool_calls=count("calls"),
        tool_errors=count("errors"))
