"""DAPO's overlong shaping and Dr.GRPO's normaliser on multi-turn episodes, through the loss the
`grpo_tools.py --loss dapo|dr_grpo` recipe builds and its GRPO stage: an episode's length is every
response token (the model's turns AND the tool observations between them) against the episode budget
--env.max-total-tokens, not the model's own tokens against one turn's --rollout.sampling.max-new-tokens.
Single-turn batches keep the length they had. CPU, fp32, "tiny" preset, vocab 64."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from recipes.cli import parse_config
from learner.config import OptimConfig
from learner.learner import Learner
from learner.losses import DrGRPOLoss
from minimind.config import preset
from minimind.model import MiniMindForCausalLM
from contract.batch import RolloutBatch
from recipes.rl_config import GRPOMathConfig
from recipes.tools_rl import ToolsGRPOConfig

pytestmark = pytest.mark.usefixtures("one_thread")

OBS = 20   # tokens of each tool observation between two turns (not sampled: loss mask 0)
# (the model's turns, reward, group): the episode first, three turns of 25 with two tool
# results between them (115 tokens, 75 of them the model's), nothing truncated
EPISODES = [([25, 25, 25], 1.0, 0), ([25], 0.0, 0),
            ([40, 40, 30], 1.0, 1), ([25], 1.0, 1), ([25], 0.0, 1)]
LENGTHS = [115, 25, 150, 25, 25]           # every response token
OWN = [75, 25, 110, 25, 25]                # the model's tokens (the loss mask)


def tool_batch(multiturn: bool = True) -> RolloutBatch:
    """Episodes laid out as rollout.multiturn writes them: turns with observations between them."""
    gen = torch.Generator().manual_seed(0)
    B, R = len(EPISODES), max(LENGTHS)
    ids = torch.zeros(B, R, dtype=torch.long)
    mask = torch.zeros(B, R)
    attn = torch.zeros(B, R, dtype=torch.long)
    for i, (turns, _, _) in enumerate(EPISODES):
        pos = 0
        for k, n in enumerate(turns):
            if k:
                pos += OBS          # the observation before this turn: attended, no loss
            mask[i, pos:pos + n] = 1
            pos += n
        attn[i, :pos] = 1
        ids[i, :pos] = torch.randint(3, 64, (pos,), generator=gen)
    n_turns = torch.tensor([len(t) for t, _, _ in EPISODES])
    episode = dict(response_attn=attn, turns=n_turns, tool_calls=n_turns - 1,
                   tool_errors=torch.zeros(B, dtype=torch.long))
    if not multiturn:   # the same rows as single-turn responses: the model's tokens only, left-aligned
        mask = (torch.arange(R) < torch.tensor(OWN).unsqueeze(-1)).float()
        episode = {}
    return RolloutBatch(
        prompt_ids=torch.randint(3, 64, (B, 4), generator=gen), prompt_mask=torch.ones(B, 4, dtype=torch.long),
        response_ids=ids, response_mask=mask, logprobs=torch.zeros(B, R),
        group_uid=torch.tensor([g for _, _, g in EPISODES]), prompt_keys=[f"p{g}" for _, _, g in EPISODES],
        answers=[""] * B, response_text=[""] * B, rewards=torch.tensor([r for _, r, _ in EPISODES]), **episode)


def recipe_learner(loss: str) -> tuple[ToolsGRPOConfig, Any, Learner]:
    """`grpo_tools.py --loss LOSS`'s settings, its GRPO stage and a Learner of a tiny policy with it."""
    cfg = parse_config(ToolsGRPOConfig, ["--loss", loss])
    torch.manual_seed(0)
    stage = cfg.stage()
    return cfg, stage, Learner(MiniMindForCausalLM(preset("tiny", vocab_size=64)), stage,
                               OptimConfig(lr=1e-3, warmup_steps=0))


def advantages_by_row(stage: Any, learner: Learner, batch: RolloutBatch) -> torch.Tensor:
    """The advantages the stage trains on, back in the batch's row order."""
    adv = torch.zeros(len(batch))
    for update in stage.plan(learner, batch).updates:
        for micro in update:
            adv[micro.exp.row_id] = micro.exp.adv.float()
    return adv


def group_normalised(values: list[float], groups: list[list[int]]) -> torch.Tensor:
    out = torch.zeros(len(values))
    for rows in groups:
        g = torch.tensor([values[r] for r in rows])
        out[rows] = (g - g.mean()) / (g.std() + 1e-6)
    return out


def test_dapo_measures_the_episode_against_the_episode_budget():
    cfg, stage, learner = recipe_learner("dapo")
    assert (cfg.rollout.sampling.max_new_tokens, cfg.env.max_total_tokens) == (64, 160)
    loss = cfg.policy_loss
    assert (loss.overlong_max_len, loss.buffer()) == (160, 32)    # ramp from 128 to 160 tokens
    batch = tool_batch()
    exp, _ = stage.experience(learner, batch)
    assert exp.response_lengths.tolist() == LENGTHS and exp.mask.sum(-1).tolist() == OWN
    # the episode (115 of 160) keeps its reward 1; 150 tokens are 22 into the 32-token ramp
    shaped = [1.0, 0.0, 1.0 - 22 / 32, 1.0, 0.0]
    assert loss.shaped_rewards(batch.rewards, exp.response_lengths).tolist() == shaped
    want = group_normalised(shaped, [[0, 1], [2, 3, 4]])
    torch.testing.assert_close(advantages_by_row(stage, learner, batch), want)


def test_single_turn_lengths_are_the_response_tokens():
    _, stage, learner = recipe_learner("dapo")
    batch = tool_batch(multiturn=False)
    exp, _ = stage.experience(learner, batch)
    assert exp.response_lengths.tolist() == OWN
    # grpo_math's budget stays one response's --rollout.sampling.max-new-tokens (90: ramp from 72)
    math_cfg = parse_config(GRPOMathConfig, ["--loss", "dapo", "--rollout.sampling.max-new-tokens", "90"])
    dapo = math_cfg.policy_loss      # the --dapo section as the run trains with it
    assert (dapo.overlong_max_len, dapo.buffer()) == (90, 18)
    shaped = dapo.shaped_rewards(batch.rewards, exp.response_lengths)
    assert shaped.tolist() == pytest.approx([1.0 - 3 / 18, 0.0, 0.0, 1.0, 0.0], abs=1e-6)


def test_dr_grpo_divides_by_the_episode_budget():
    cfg, _, learner = recipe_learner("dr_grpo")
    assert cfg.policy_loss.max_response_len == 160
    stats = learner.train_step(tool_batch())
    # one on-policy update (ratio 1): L = −Σ_i A_i·|own tokens_i| / (B·160), A = r − group mean
    adv = [0.5, -0.5, 1 / 3, 1 / 3, -2 / 3]
    want = -sum(a * n for a, n in zip(adv, OWN)) / (len(OWN) * 160)
    assert stats["loss"] == pytest.approx(want, rel=1e-5)


def test_dr_grpo_below_the_episode_budget_is_refused_naming_the_budget(capsys):
    with pytest.raises(SystemExit):
        parse_config(ToolsGRPOConfig, ["--loss", "dr_grpo", "--dr-grpo.max-response-len", "64"])
    err = capsys.readouterr().err
    assert "--dr-grpo.max-response-len=64 is below --env.max-total-tokens=160" in err
    logp = torch.zeros(1, 150)
    with pytest.raises(ValueError, match="150 tokens exceed max_response_len=64: .*--env.max-total-tokens"):
        DrGRPOLoss(max_response_len=64)(logp, logp, None, torch.ones(1), torch.ones(1, 150))
