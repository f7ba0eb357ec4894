"""Shared by the server tests (fixtures `server` and `client` in conftest.py): a random-init `tiny`
checkpoint (init std 0.2, so greedy choices are far from ties) with a BPE trained on the built-in math
text, and `Reference`, the greedy answers of `minimind.generate` on the same checkpoint."""
from __future__ import annotations

import socket
from pathlib import Path

import torch

from minimind.checkpoint import load_model, save_model
from minimind.config import preset
from minimind.data import synthetic_math as sm
from minimind.generate import SamplingParams, generate
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import MiniMindTokenizer, train_tokenizer

MAX_TOKENS = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    tok = train_tokenizer(sm.pretrain_texts(sm.generate_problems(200, seed=0, split="train"), facts=False),
                          vocab_size=320)
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(preset("tiny", vocab_size=tok.vocab_size, initializer_range=0.2)).eval()
    save_model(model, path)
    tok.save(path)
    return path


class Reference:
    """Greedy answers of `minimind.generate` for the served checkpoint (or other weights)."""

    def __init__(self, ckpt: Path):
        self.model = load_model(ckpt)
        self.tok = MiniMindTokenizer.load(ckpt)

    def ids(self, messages) -> list[int]:
        return self.tok.encode(self.tok.apply_chat_template(messages, add_generation_prompt=True))

    def answer(self, prompt_ids: list[int], max_tokens: int = MAX_TOKENS) -> tuple[str, str, int, list[float]]:
        """(text, finish_reason, completion tokens, logprobs) of the greedy completion."""
        out = generate(self.model, [prompt_ids], SamplingParams(max_new_tokens=max_tokens, temperature=0,
                                                                stop_token_ids=(self.tok.eos_id,)))
        mask = out.response_mask[0].bool()
        ids = out.response_ids[0][mask].tolist()
        stopped = ids[-1] == self.tok.eos_id
        text = self.tok.decode(ids[:-1] if stopped else ids)
        return text, "stop" if stopped else "length", len(ids), out.logprobs[0][mask].tolist()

    def chat(self, content: str, max_tokens: int = MAX_TOKENS):
        return self.answer(self.ids([{"role": "user", "content": content}]), max_tokens)


def user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]
