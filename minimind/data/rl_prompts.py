"""RL prompts: rendered by the tokenizer's chat template, with a stable key and reference answer.

Rows are math records ({"prompt"|"question", "answer"}, optionally "slice": a label such as a
difficulty, by which evaluations break accuracy down) or chats ({"conversations"}: the prompt is
everything before the last assistant message, whose content is the answer; MiniMind-3's rlaif.jsonl
leaves it empty). With a tokenizer, its template renders the prompt (so a MiniMind v2 template adds
its default system message, exactly as at SFT time) and prompts longer than `max_prompt_tokens` are
dropped (or cut from the left with truncate_long_prompts=True), counted and reported with file:line;
a source with no usable prompt at all raises DataError (as the supervised readers do).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from minimind.data.readers import (DataError, Message, ReadReport, _Bad, chat_tools, finish_report, iter_rows,
                                   parse_conversation, parse_math)
from minimind.tokenizer import MiniMindTokenizer, render_chat


@dataclass(frozen=True)
class RLPrompt:
    prompt: str  # chat-templated, ends with the template's generation prompt
    key: str  # stable id of the prompt text (sha256 prefix): same prompt, same key, any run
    answer: str  # reference answer ("" when the source has none)
    messages: tuple  # the prompt messages before templating
    slice: str = ""  # the record's optional "slice" (e.g. "d3", a difficulty): evaluations report each


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _slice(row: Any) -> str:
    value = row.get("slice", "") if isinstance(row, dict) else ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad(f"field 'slice' must be a string or integer, got {type(value).__name__}")
    return str(value)


def _parse_rl(row: Any) -> tuple[list[Message], str]:
    if isinstance(row, dict) and "conversations" in row:
        msgs = parse_conversation(row, require_assistant=False)
        if msgs[-1]["role"] == "assistant":
            if len(msgs) == 1:
                raise _Bad("conversation has no prompt before the assistant message")
            return msgs[:-1], msgs[-1]["content"]
        return msgs, ""
    rec = parse_math(row)
    return [{"role": "user", "content": rec.prompt}], rec.answer


class RLPromptDataset:
    """Prompts for rollouts: templated text, stable key and reference answer.

    tokenizer None renders with the built-in template (no length limit can be applied then)."""

    def __init__(self, source: str | Path | Sequence[Mapping], system_prompt: str | None = None,
                 strict: bool = False, tokenizer: MiniMindTokenizer | None = None,
                 max_prompt_tokens: int | None = None, truncate_long_prompts: bool = False,
                 report_path: str | Path | None = None, **template_kwargs: Any):
        if max_prompt_tokens is not None and tokenizer is None:
            raise ValueError("max_prompt_tokens needs the tokenizer that counts the tokens (tokenizer=...)")
        name = str(source) if isinstance(source, (str, Path)) else "<records>"
        rows = (iter_rows(source) if isinstance(source, (str, Path))
                else ((f"<records>:{i}", dict(r) if isinstance(r, Mapping) else r) for i, r in enumerate(source)))
        report = ReadReport(name)
        self.items: list[RLPrompt] = []
        self.n_truncated = 0
        for loc, row in rows:
            try:
                if isinstance(row, _Bad):
                    raise row
                msgs, answer = _parse_rl(row)
                part = _slice(row)
                if system_prompt and msgs[0]["role"] != "system":
                    msgs = [{"role": "system", "content": system_prompt}, *msgs]
                msgs_t, tools = chat_tools(msgs)
                if tokenizer is None:
                    text = render_chat(msgs_t, add_generation_prompt=True, tools=tools, **template_kwargs)
                else:
                    text = tokenizer.apply_chat_template(msgs_t, add_generation_prompt=True, tools=tools,
                                                         **template_kwargs)
                    if max_prompt_tokens is not None:
                        # one token more than the limit tells a prompt over it; a longer one is cut
                        # before it is tokenized (a 10 MB line costs what the limit costs)
                        ids = tokenizer.encode_chat(msgs_t, add_generation_prompt=True, tools=tools,
                                                    max_tokens=max_prompt_tokens + 1,
                                                    keep_end=truncate_long_prompts, **template_kwargs)
                        if len(ids) > max_prompt_tokens:
                            if not truncate_long_prompts:
                                raise _Bad(f"prompt has more than {max_prompt_tokens} tokens "
                                           f"(max_prompt_tokens={max_prompt_tokens})")
                            # keep the end: the question and the generation prompt
                            text = tokenizer.decode(ids[-max_prompt_tokens:], skip_special_tokens=False)
                            self.n_truncated += 1
            except _Bad as e:
                if strict:
                    raise DataError(f"{loc}: {e}") from None
                report.add(f"{loc}: {e}", str(e))
                continue
            self.items.append(RLPrompt(text, prompt_key(text), answer, tuple(msgs), part))
        report.n_ok = len(self.items)
        self.report = report
        finish_report(report, report_path)   # no usable prompt at all: DataError, not a run without prompts

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> RLPrompt:
        return self.items[i]

    def driver_prompts(self) -> list[dict]:
        """The prompts as the RL driver sends them to rollout workers: {"prompt", "key", "answer"}, and
        "slice" where the record named one."""
        return [{"prompt": p.prompt, "key": p.key, "answer": p.answer, **({"slice": p.slice} if p.slice else {})}
                for p in self.items]
