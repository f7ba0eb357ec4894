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
from minimind.tokenizer import MiniMindTokenizer, render_chat, train_tokenizer
from rollout.env.tools import calculator_tool

MAX_TOKENS = 24
CALC = calculator_tool().schema()
"""The project's calculator tool as the openai client sends it (keys `type, properties, required`)."""
TOOL_CHAT = [{"role": "user", "content": "what is 123 * 45?"},
             {"role": "assistant", "content": "", "tool_calls": [
                 {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "123 * 45"}}}]},
             {"role": "tool", "content": "5535"},
             {"role": "assistant", "content": "#### 5535"}]
"""One tool-use chat: the call, the calculator's result, the final answer."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-init tiny model and a BPE of the built-in math text and of TOOL_CHAT as the template
    renders it (the tools block then takes ~200 tokens, not ~700)."""
    texts = sm.pretrain_texts(sm.generate_problems(200, seed=0, split="train"), facts=False)
    tok = train_tokenizer(texts + [render_chat(TOOL_CHAT, tools=[CALC])] * 20, vocab_size=640)
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
