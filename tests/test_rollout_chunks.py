"""A rollout call larger than --rollout.max-rows (an evaluation of the held-out set) is generated in
chunks of whole prompts: greedy answers are those of one unchunked call, sampled ones are seeded per
chunk (the first chunk with the call's seed), and the batch is the same typed batch either way."""
from __future__ import annotations

import pytest
import torch

from minimind.config import preset
from minimind.data import synthetic_math as sm
from minimind.generate import SamplingParams
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import train_tokenizer
from rollout.worker import RolloutConfig, RolloutWorker, chunk_seed

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = train_tokenizer(sm.pretrain_texts(sm.generate_problems(200, seed=0), facts=False), vocab_size=300)
    folder = tmp_path_factory.mktemp("tok")
    tok.save(folder)
    torch.manual_seed(0)
    model = MiniMindForCausalLM(preset("tiny", vocab_size=tok.vocab_size))
    prompts = [{"prompt": tok.apply_chat_template([{"role": "user", "content": f"What is {i} + {2 * i + 1}?"}],
                                                  add_generation_prompt=True),
                "key": f"k{i}", "answer": str(3 * i + 1), "uid": 100 + i} for i in range(7)]
    return folder, model, prompts


def worker(setup, max_rows: int) -> RolloutWorker:
    folder, model, _ = setup
    w = RolloutWorker(RolloutConfig(SamplingParams(n=3, max_new_tokens=12), max_rows=max_rows),
                      model.config.to_dict(), str(folder), device="cpu")
    w.set_weights([model.state_dict()], 0)
    return w


def test_greedy_answers_do_not_depend_on_the_chunking(setup):
    prompts = setup[2]
    greedy = {"n": 1, "temperature": 0.0}
    whole = worker(setup, 1000).generate(prompts, [None], 0, seed=5, sampling=greedy, row_base=64)
    chunked = worker(setup, 2).generate(prompts, [None], 0, seed=5, sampling=greedy, row_base=64)
    assert whole.meta["engine_chunks"] == 1 and chunked.meta["engine_chunks"] == 4   # 7 prompts, 2 per call
    assert chunked.response_text == whole.response_text
    assert chunked.group_uid.tolist() == whole.group_uid.tolist() == list(range(100, 107))
    assert chunked.row_id.tolist() == whole.row_id.tolist() == list(range(64, 71))
    assert chunked.prompt_keys == whole.prompt_keys and chunked.answers == whole.answers
    R = whole.response_ids.shape[1]
    assert chunked.response_ids.shape[1] == R     # re-padded to the longest response of all chunks
    real = whole.response_mask.bool()
    assert torch.equal(chunked.response_ids[real], whole.response_ids[real])
    torch.testing.assert_close(chunked.logprobs, whole.logprobs, rtol=0, atol=1e-5)
    assert chunked.meta["new_tokens"] == whole.meta["new_tokens"]          # per-call totals add up


def test_sampled_rows_are_seeded_per_chunk(setup):
    prompts = setup[2]
    big = worker(setup, 6)                       # 2 prompts x 3 samples per engine call
    batch = big.generate(prompts, [None], 0, seed=9)
    assert batch.meta["engine_chunks"] == 4 and len(batch) == 21
    assert big.generate(prompts, [None], 0, seed=9).response_text == batch.response_text   # reproducible
    # chunk c is one engine call on its prompts with chunk_seed(seed, c); the first keeps the call's seed
    assert chunk_seed(9, 0) == 9 and len({chunk_seed(9, c) for c in range(4)}) == 4
    one = worker(setup, 1000)
    for c in range(4):
        alone = one.generate(prompts[2 * c:2 * c + 2], [None], 0, seed=chunk_seed(9, c))
        assert batch.response_text[6 * c:6 * c + len(alone)] == alone.response_text, c
    # a call within max_rows samples exactly as an unchunked call always did
    assert one.generate(prompts[:2], [None], 0, seed=9).response_text == batch.response_text[:6]
