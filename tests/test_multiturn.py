"""Multi-turn tool-use rollouts (rollout.multiturn, rollout.tool_worker): a hand-built episode's
tokens, loss mask, logprobs and attention; the template's rendering of the whole conversation; real
sampled multi-turn episodes whose logprobs the learner recomputes to < 1e-5 (fp32); GRPO, PPO and SPO
updates on multi-turn batches; one engine call per turn for all live episodes; budgets."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from learner.config import OptimConfig
from learner.learner import Learner
from learner.losses import SPOTracker
from learner.stages import GRPOStage, PPOStage, RLUpdateConfig, SPOStage
from minimind.config import preset
from minimind.data import synthetic_math as sm
from minimind.generate import GenerationOutput, SamplingParams, left_pad
from minimind.model import MiniMindForCausalLM, MiniMindScoreModel
from minimind.tokenizer import train_tokenizer
from contract.batch import RolloutBatch
from rollout.engines import NativeEngine
from rollout.env import EnvStep, ToolEnv, ToolRegistry, calculator_tool
from rollout.multiturn import EnvConfig, episodes_to_batch, run_episodes
from rollout.tool_worker import ToolRolloutWorker
from rollout.worker import RolloutConfig

pytestmark = pytest.mark.usefixtures("one_thread")

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "123 * 45"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    t = train_tokenizer(sm.pretrain_texts(sm.generate_problems(300, seed=0), facts=False) + [CALL], vocab_size=320)
    t.save(tmp_path_factory.mktemp("tok"))
    return t


class ScriptedEngine:
    """Answers each turn of each episode from a script (tokens the 'model' wrote), with a fixed logprob
    per token: the test's stand-in for a policy, through the engines' public interface."""
    name = "scripted"

    def __init__(self, turns: list[list[int]]):
        self.turns, self.calls, self.batch_sizes = turns, 0, []

    def generate(self, token_lists, params, pad_id) -> GenerationOutput:
        rows = [t for t in token_lists for _ in range(params.n)]
        out = [self.turns[self.calls][: params.max_new_tokens] for _ in rows]
        self.calls += 1
        self.batch_sizes.append(len(rows))
        R = max(len(o) for o in out)
        ids = torch.tensor([o + [pad_id] * (R - len(o)) for o in out])
        mask = torch.tensor([[1.0] * len(o) + [0.0] * (R - len(o)) for o in out])
        p_ids, p_mask = left_pad(rows, pad_id)
        return GenerationOutput(p_ids, p_mask, ids, mask, mask * -0.5, torch.arange(len(rows)))


def test_hand_built_episode_mask_logprobs_and_template(tok):
    reg = ToolRegistry().add(calculator_tool())
    env = ToolEnv(reg)
    turn1 = tok.encode(CALL) + [tok.eos_id]
    turn2 = tok.encode("#### 5535") + [tok.eos_id]
    engine = ScriptedEngine([turn1, turn2])
    q = [{"role": "user", "content": "What is 123 * 45?"}]
    params = SamplingParams(n=2, max_new_tokens=200, stop_token_ids=(tok.eos_id,))
    episodes, stats = run_episodes(engine, tok, env, [{"messages": q}], params, EnvConfig(max_turns=3, max_total_tokens=400))
    assert engine.batch_sizes == [2, 2] and stats["engine_calls"] == 2      # both episodes, one call per turn
    batch = episodes_to_batch(episodes, tok, [7, 7], ["k", "k"], ["5535", "5535"], 1.0, version=3)
    obs = tok.encode("\n<|im_start|>user\n<tool_response>\n5535\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    expect_ids = turn1 + obs + turn2
    expect_mask = [1.0] * len(turn1) + [0.0] * len(obs) + [1.0] * len(turn2)
    for i in range(2):
        assert batch.response_ids[i].tolist() == expect_ids
        assert batch.response_mask[i].tolist() == expect_mask
        assert batch.logprobs[i].tolist() == [-0.5 * m for m in expect_mask]        # 0 on observation tokens
        assert batch.response_attn[i].tolist() == [1] * len(expect_ids)
    assert batch.turns.tolist() == [2, 2] and batch.tool_calls.tolist() == [1, 1] and batch.tool_errors.tolist() == [0, 0]
    # prompt ++ response is exactly the template's rendering of the whole conversation
    full = [*q, {"role": "assistant", "content": CALL}, {"role": "tool", "content": "5535"},
            {"role": "assistant", "content": "#### 5535"}]
    text = tok.decode(batch.sequences[0][batch.attention_mask[0].bool()].tolist(), skip_special_tokens=False)
    assert text + "\n" == tok.apply_chat_template(full, tools=reg.schemas())
    assert batch.response_text[0].endswith("#### 5535")
    # the learner's view: loss only on the model's tokens, attention over everything real
    P = batch.prompt_ids.shape[1]
    assert batch.attention_mask[:, P:].tolist() == [[1] * len(expect_ids)] * 2


def test_budgets_and_turn_limit(tok):
    reg = ToolRegistry().add(calculator_tool())
    turn1 = tok.encode(CALL) + [tok.eos_id]
    q = [{"messages": [{"role": "user", "content": "What is 123 * 45?"}]}]
    params = SamplingParams(n=1, max_new_tokens=200, stop_token_ids=(tok.eos_id,))
    # max_turns=1: the call is never answered, the episode is one turn
    eps, _ = run_episodes(ScriptedEngine([turn1]), tok, ToolEnv(reg), q, params, EnvConfig(max_turns=1, max_total_tokens=400))
    assert (eps[0].turns, eps[0].calls, eps[0].tokens) == (1, 1, turn1)
    # a budget that leaves no room after the observation: the episode ends after the call
    eps, _ = run_episodes(ScriptedEngine([turn1, turn1]), tok, ToolEnv(reg), q, params,
                          EnvConfig(max_total_tokens=len(turn1) + 5))
    assert eps[0].tokens == turn1 and eps[0].done
    # a budget that cuts the first turn: truncated, no tool runs
    eps, _ = run_episodes(ScriptedEngine([turn1]), tok, ToolEnv(reg), q, params, EnvConfig(max_total_tokens=4))
    assert eps[0].tokens == turn1[:4] and eps[0].calls == 0
    # a prompt without tools: one turn even if it writes a call
    eps, _ = run_episodes(ScriptedEngine([turn1]), tok, ToolEnv(reg), [dict(q[0], tools=False)], params,
                          EnvConfig(max_total_tokens=400))
    assert (eps[0].turns, eps[0].calls) == (1, 0)
    with pytest.raises(ValueError, match="no 'messages'"):
        run_episodes(ScriptedEngine([turn1]), tok, ToolEnv(reg), [{"prompt": "x", "key": "k1"}], params, EnvConfig())
    with pytest.raises(ValueError, match="max-turns"):
        EnvConfig(max_turns=0)


class EveryTurnEnv:
    """An environment that answers every turn with a tool message (an observation of a few tokens),
    so that a random policy produces real multi-turn episodes."""

    def tool_schemas(self) -> list[dict]:
        return [calculator_tool().schema()]

    def step(self, messages: list[dict], assistant_text: str) -> EnvStep:
        return EnvStep([{"role": "tool", "content": f"obs {len(messages)}"}], done=False, calls=1)


def _sampled_batch(tok, model, temperature: float, seed: int, n_prompts: int = 3, G: int = 2) -> RolloutBatch:
    engine = NativeEngine(model.config, "cpu")
    engine.load_weights(model.state_dict())
    # every token but a few ends a turn: turns of 1-3 tokens, several turns per episode
    stop = tuple(t for t in range(3, tok.vocab_size) if t % 4) + (tok.eos_id,)
    params = SamplingParams(n=G, max_new_tokens=6, temperature=temperature, seed=seed, stop_token_ids=stop)
    prompts = [{"messages": [{"role": "user", "content": f"What is {i} + {i * 7}?"}]} for i in range(n_prompts)]
    eps, _ = run_episodes(engine, tok, EveryTurnEnv(), prompts, params, EnvConfig(max_turns=4, max_total_tokens=80))
    B = n_prompts * G
    uid = [i // G for i in range(B)]
    batch = episodes_to_batch(eps, tok, uid, [f"p{u}" for u in uid], [""] * B, temperature, version=0)
    assert (batch.turns > 1).all()
    assert ((batch.response_mask == 0) & (batch.response_attn == 1)).any(dim=1).all()   # observations inside
    return batch


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_learner_recomputes_multiturn_logprobs(tok, temperature):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(preset("tiny", vocab_size=tok.vocab_size)).eval()
    batch = _sampled_batch(tok, model, temperature, seed=5)
    stage = GRPOStage()
    learner = Learner(copy.deepcopy(model), stage, OptimConfig(lr=1e-3, warmup_steps=0), ref_model=copy.deepcopy(model))
    exp, stats = stage.experience(learner, batch)
    m = batch.response_mask.bool()
    assert stats["logprob_gap"] < 1e-5
    assert (exp.old_logp - batch.logprobs)[m].abs().max() < 1e-5
    assert exp.mask.tolist() == batch.response_mask.tolist()
    # the check has teeth: attending only to the loss-masked tokens (observations hidden) is far off
    blind = replace(batch, response_attn=None)
    assert stage.experience(learner, blind)[1]["logprob_gap"] > 1e-3


@pytest.mark.parametrize("algo", ["grpo", "ppo", "spo"])
def test_rl_stages_update_on_multiturn_batches(tok, algo):
    torch.manual_seed(1)
    model = MiniMindForCausalLM(preset("tiny", vocab_size=tok.vocab_size)).eval()
    G = 1 if algo == "spo" else 2
    batch = _sampled_batch(tok, model, 1.0, seed=7, n_prompts=4, G=G)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0][: len(batch)])
    batch = batch.with_rewards(rewards)
    critic = None
    update = RLUpdateConfig(minibatches=2)
    if algo == "grpo":
        stage = GRPOStage(update=update)
    elif algo == "ppo":
        stage = PPOStage(update=update)
        critic = MiniMindScoreModel(model.config)
    else:
        stage = SPOStage(update=update, tracker=SPOTracker())
    learner = Learner(copy.deepcopy(model), stage, OptimConfig(lr=1e-3, warmup_steps=0), ref_model=copy.deepcopy(model),
                      critic=critic)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    stats = learner.train_step(batch)
    assert stats["updates"] == 2 and stats["logprob_gap"] < 1e-5
    assert any(not torch.equal(before[k], v) for k, v in learner.model.state_dict().items())
    if algo == "spo":   # the drift rescoring keeps the first turn (its context has no observation)
        first = int((batch.response_mask[0] == 0).nonzero()[0])
        assert stage.tracker.remembered(batch.prompt_keys[0])[1] == batch.response_ids[0, :first].tolist()
        assert learner.train_step(batch)["drift_mean"] > 0     # rescored after an update: the policy moved


def test_multiturn_batches_select_and_concat(tok):
    torch.manual_seed(2)
    model = MiniMindForCausalLM(preset("tiny", vocab_size=tok.vocab_size)).eval()
    a = _sampled_batch(tok, model, 1.0, seed=1, n_prompts=2)
    b = _sampled_batch(tok, model, 1.0, seed=2, n_prompts=1)
    joined = RolloutBatch.concat([a, b], pad_id=tok.pad_id)
    assert joined.turns.tolist() == a.turns.tolist() + b.turns.tolist()
    R = joined.response_ids.shape[1]
    assert joined.response_attn[len(a):, : b.response_attn.shape[1]].tolist() == b.response_attn.tolist()
    assert joined.response_attn.shape == (len(a) + len(b), R)
    picked = joined.select([4, 0])
    assert picked.tool_calls.tolist() == [joined.tool_calls[4].item(), joined.tool_calls[0].item()]
    assert torch.equal(picked.response_attn[0], joined.response_attn[4])
    single = replace(b, response_attn=None, turns=None, tool_calls=None, tool_errors=None)
    with pytest.raises(ValueError, match="multi-turn and single-turn"):
        RolloutBatch.concat([a, single])


def test_tool_rollout_worker_generates_episodes(tok, tmp_path):
    """The rollout worker with a calculator: same call as RolloutWorker, a typed multi-turn batch back."""
    tok.save(tmp_path)
    torch.manual_seed(3)
    model = MiniMindForCausalLM(preset("tiny", vocab_size=tok.vocab_size))
    cfg = RolloutConfig(SamplingParams(n=2, max_new_tokens=8))
    worker = ToolRolloutWorker(cfg, model.config.to_dict(), str(tmp_path), env=ToolEnv(ToolRegistry().add(calculator_tool())),
                               env_cfg=EnvConfig(max_turns=2, max_total_tokens=40), device="cpu")
    prompts = [{"messages": [{"role": "user", "content": "What is 2 + 3?"}], "key": "a", "answer": "5", "uid": 4},
               {"messages": [{"role": "user", "content": "What is 9 + 3?"}], "key": "b", "answer": "12", "uid": 5,
                "tools": False}]
    batch = worker.generate(prompts, [model.state_dict()], version=2, seed=11)
    assert batch.group_uid.tolist() == [4, 4, 5, 5] and batch.prompt_keys == ["a", "a", "b", "b"]
    assert batch.answers == ["5", "5", "12", "12"] and batch.policy_version == 2 and batch.multiturn
    assert torch.equal(batch.response_mask.bool(), batch.response_attn.bool())    # no tool call: one turn each
    assert batch.turns.tolist() == [1, 1, 1, 1] and batch.meta["engine_calls"] == 1
    assert batch.prompt_ids.shape[1] > 100 and batch.prompt_mask[2].sum() < batch.prompt_mask[0].sum()  # tools block
    again = worker.generate(prompts, [model.state_dict()], version=2, seed=11)
    assert torch.equal(again.response_ids, batch.response_ids)                        # seeded
