"""Terminal chat with a MiniMind model: streams the reply, keeps the conversation.

    python experiments/chat.py --model runs/sft/final                  # the model in this process
    python experiments/chat.py --url http://127.0.0.1:8000             # a running experiments/serve.py
    python experiments/chat.py --init full_sft_512.pth --tokenizer minimind_tokenizer/

Commands: /reset (forget the conversation, keep the system prompt), /system <text> (set the system
prompt and start over; `/system` alone removes it), /exit (or Ctrl-D).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Iterator

from recipes.cli import parse_config
from recipes.errors import run_or_exit


@dataclass
class ChatConfig:
    model: str | None = None
    """Checkpoint folder to load in this process (tokenizer inside)."""
    init: str | None = None
    """A MiniMind .pth to load in this process (needs --tokenizer)."""
    tokenizer: str | None = None
    """Tokenizer folder for --init (default: the --model folder)."""
    url: str | None = None
    """Talk to a running server instead (e.g. http://127.0.0.1:8000)."""
    system: str = ""
    """System prompt at start ('' = none)."""
    temperature: float = 0.7
    """Sampling temperature (0 = greedy)."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    max_tokens: int = 256
    """Longest reply, in tokens."""

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.model, self.init, self.url)) != 1:
            raise ValueError("give exactly one of --model, --init or --url")


def remote_stream(cfg: ChatConfig, messages: list[dict]) -> Iterator[str]:
    import openai

    client = openai.OpenAI(base_url=cfg.url.rstrip("/") + "/v1", api_key="unused")
    model = client.models.list().data[0].id
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True,
                                                temperature=cfg.temperature, top_p=cfg.top_p,
                                                max_tokens=cfg.max_tokens):
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


class LocalChat:
    """The server's own engine in this process (no Ray, no HTTP): same template, same sampling."""

    def __init__(self, cfg: ChatConfig):
        from serving.config import ServeConfig
        from serving.server import ModelServer, check_model, load_checkpoint

        scfg = ServeConfig(model=cfg.model, init=cfg.init, tokenizer=cfg.tokenizer,
                           default_max_tokens=cfg.max_tokens)
        check_model(scfg)
        self.server = ModelServer(scfg, *load_checkpoint(scfg))
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()

    def stream(self, messages: list[dict]) -> Iterator[str]:
        import json

        body = {"messages": messages, "stream": True, "temperature": self.cfg.temperature,
                "top_p": self.cfg.top_p, "max_tokens": self.cfg.max_tokens}
        events = self.loop.run_until_complete(self.server.chat(body)).__aiter__()
        while True:
            try:
                line = self.loop.run_until_complete(events.__anext__())
            except StopAsyncIteration:
                return
            data = line.removeprefix("data: ").strip()
            if data == "[DONE]":
                return
            ev = json.loads(data)
            if "error" in ev:
                raise RuntimeError(ev["error"]["message"])
            for c in ev["choices"]:
                if c["delta"].get("content"):
                    yield c["delta"]["content"]


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ChatConfig, argv, description=__doc__.split("\n")[0])
    if cfg.url:
        stream = lambda msgs: remote_stream(cfg, msgs)  # noqa: E731
    else:   # a bad path, checkpoint or tokenizer: one line, exit 2
        stream = run_or_exit(lambda: LocalChat(cfg).stream)
    system, history = cfg.system, []
    print("MiniMind chat. /reset, /system <text>, /exit", flush=True)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = []
            print("(conversation cleared)", flush=True)
            continue
        if text.startswith("/system"):
            system, history = text[len("/system"):].strip(), []
            print(f"(system prompt {'set' if system else 'removed'}; conversation cleared)", flush=True)
            continue
        history.append({"role": "user", "content": text})
        msgs = ([{"role": "system", "content": system}] if system else []) + history
        print("assistant> ", end="", flush=True)
        reply = []
        try:
            for piece in stream(msgs):
                reply.append(piece)
                print(piece, end="", flush=True)
        except Exception as e:  # a server error ends this turn, not the session
            print(f"\n(error: {e})", flush=True)
            history.pop()
            continue
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(reply)})


if __name__ == "__main__":
    main()
