"""MiniMind tokenizer: byte-level BPE (HF `tokenizers`) with the folder's own Jinja chat template.

The three special tokens and their ids are fixed by MiniMind and by every checkpoint
trained with it: `<|endoftext|>`=0 (also used as padding), `<|im_start|>`=1 (bos),
`<|im_end|>`=2 (eos). A folder written by `MiniMindTokenizer.save` is loadable both here
and by `transformers.PreTrainedTokenizerFast.from_pretrained` (so an exported model folder
is complete), and a real MiniMind `tokenizer.json` loads here unchanged.

Chats are rendered with the folder's `chat_template` (tokenizer_config.json, or chat_template.jinja)
exactly as transformers renders it (see `minimind.chat_template`); a tokenizer without one uses the
built-in `CHAT_TEMPLATE`. The rendered string is encoded whole, so training ids equal the ids
transformers / vLLM produce for the same chat, and label masks are computed on those ids through
character offsets.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .chat_template import MINIMIND_CHAT_TEMPLATE, render, template_default_system

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)  # index == required id

# the built-in tokenizer's template (MiniMind-3's structure; see minimind.chat_template)
CHAT_TEMPLATE = MINIMIND_CHAT_TEMPLATE
ASSISTANT_HEADER = IM_START + "assistant\n"


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable or incompatible; the message names the file."""


class TokenizerMismatchError(TokenizerError):
    """The tokenizer does not fit the model (vocabulary size or special ids differ)."""


def check_fits(tokenizer: "MiniMindTokenizer", model_config: Any, tokenizer_flag: str = "--tokenizer") -> None:
    """Raise TokenizerMismatchError unless `tokenizer` is the vocabulary `model_config` was built for:
    same size, and the model's bos / eos / pad ids are the tokenizer's. The message names both sides
    and the flag that passes the right tokenizer."""
    problems = []
    if tokenizer.vocab_size != model_config.vocab_size:
        problems.append(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                        f"{model_config.vocab_size}")
    for name, tok_id in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id), ("pad", tokenizer.pad_id)):
        model_id = getattr(model_config, f"{name}_token_id")
        if model_id != tok_id:
            problems.append(f"the model's {name}_token_id is {model_id} but the tokenizer's {name} id is {tok_id} "
                            f"({tokenizer.id_to_token(tok_id)!r})")
    if problems:
        raise TokenizerMismatchError(
            f"tokenizer {tokenizer.source} does not fit the model: {'; '.join(problems)}. Pass the tokenizer "
            f"the model was trained with: {tokenizer_flag} <folder with tokenizer.json>")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 6400, split_digits: bool = True
) -> "MiniMindTokenizer":
    """Train a byte-level BPE on `texts`; specials get ids 0, 1, 2.

    `split_digits` puts a Digits(individual_digits=True) step before ByteLevel, so no
    merge ever spans two digits: every number is spelled digit by digit, which is what
    lets a tiny model learn column arithmetic. Decoding is still exact, because the
    Digits step only splits (it never changes bytes).
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is below the 256 byte symbols + 3 specials")
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),  # trained first => ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return MiniMindTokenizer(tok)


class MiniMindTokenizer:
    """Thin typed wrapper around a `tokenizers.Tokenizer` with MiniMind's specials and a chat template."""

    def __init__(self, tokenizer: Tokenizer, source: str = "<in memory>", chat_template: str | None = None,
                 special_tokens_map: Mapping[str, str] | None = None):
        _check_specials(tokenizer, source)
        self._tok = tokenizer
        self.source = source
        self.chat_template: str = chat_template or CHAT_TEMPLATE
        """Jinja chat template (the folder's own, or the built-in CHAT_TEMPLATE)."""
        self.special_tokens_map: dict[str, str] = {
            "bos_token": IM_START, "eos_token": IM_END, "pad_token": ENDOFTEXT, "unk_token": ENDOFTEXT,
            **(special_tokens_map or {})}
        # A twin that treats special-token *strings* as plain text: used for text a chat message
        # carries, so a user typing "<|im_end|>" cannot forge a turn boundary.
        self._literal = Tokenizer.from_str(tokenizer.to_str())
        self._literal.encode_special_tokens = True
        self._specials = sorted((t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special),
                                key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, self._specials)))

    # ----- ids ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (read-only use)."""
        return self._tok

    @property
    def fingerprint(self) -> str:
        """Stable hash of the full tokenizer definition (used in data cache keys)."""
        return hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()[:16]

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self._tok.id_to_token(idx)

    # ----- text <-> ids -----------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no bos/eos added. Special-token strings in `text` map to
        their ids (as in HF), which is what makes encode(apply_chat_template(...)) work."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many texts at once (parallel in the Rust backend)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True
    ) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    # ----- chat -------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                            tools: Sequence[Mapping[str, Any]] | None = None, tokenize: bool = False,
                            **template_kwargs: Any) -> Any:
        """The chat rendered by this tokenizer's Jinja template, as transformers renders it: a str, or
        its ids with tokenize=True. `template_kwargs` are template variables (e.g. open_thinking=True)."""
        if tokenize:
            return self.encode_chat(messages, add_generation_prompt, tools=tools, **template_kwargs)
        return render(self.chat_template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                      special_tokens=self.special_tokens_map, **template_kwargs)

    @property
    def default_system_prompt(self) -> str | None:
        """The system message the template inserts into chats without one (None if it inserts none)."""
        return template_default_system(self.chat_template)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                    tools: Sequence[Mapping[str, Any]] | None = None, max_tokens: int | None = None,
                    keep_end: bool = False, **template_kwargs: Any) -> list[int]:
        """Token ids of the rendered chat, encoded as one string (= transformers' tokenize=True ids);
        max_tokens / keep_end: only the first (last) max_tokens of them, see encode_chat_masked."""
        return self.encode_chat_masked(messages, add_generation_prompt, tools=tools, max_tokens=max_tokens,
                                       keep_end=keep_end, **template_kwargs)[0]

    def encode_chat_masked(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                           tools: Sequence[Mapping[str, Any]] | None = None, label_turn_newline: bool = False,
                           last_turn_only: bool = False, max_tokens: int | None = None, keep_end: bool = False,
                           **template_kwargs: Any) -> tuple[list[int], list[int]]:
        """(ids, assistant_mask) of the rendered chat.

        ids are those of the whole rendered string. The mask is 1 on every token that overlaps an
        assistant turn's text: from after `<|im_start|>assistant\n` through its `<|im_end|>` (so
        reasoning, content and tool calls; learning to stop is part of the answer), plus the `\n`
        after `<|im_end|>` with label_turn_newline=True (MiniMind's own SFT / DPO labelling).
        last_turn_only: only the final assistant turn (DPO responses).
        max_tokens: only the first `max_tokens` ids (the last with keep_end) are wanted, and only they are
        returned; a longer text is cut to `chars_for_tokens(max_tokens)` characters before anything
        tokenizes it, so a 10 MB message costs what that many characters cost (the mask still marks the
        turns of the whole chat).
        Special-token strings typed inside message fields stay text (they cannot end a turn)."""
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        text = self.apply_chat_template(messages, add_generation_prompt, tools=tools, **template_kwargs)
        forged = self._forged_specials(messages, text, add_generation_prompt, tools, template_kwargs)
        trusted = [m for m in self._special_re.finditer(text) if m.start() not in forged]
        spans = self._assistant_spans(text, trusted, label_turn_newline)
        if last_turn_only:
            spans = spans[-1:]
        lo, hi = 0, len(text)
        if max_tokens is not None and len(text) > self.chars_for_tokens(max_tokens):
            reach = self.chars_for_tokens(max_tokens)
            lo, hi = (hi - reach, hi) if keep_end else (0, reach)
        ids, offsets = self._encode_rendered(text, lo, hi, forged, trusted)
        mask = [1 if any(a < e and b > s for s, e in spans) else 0 for a, b in offsets]
        if max_tokens is not None:
            keep = slice(max(0, len(ids) - max_tokens), None) if keep_end else slice(0, max_tokens)
            ids, mask = ids[keep], mask[keep]
        return ids, mask

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters of text one token stands for: its vocabulary string's length (a byte-level
        token's string has one character per byte, and a character is at least one byte; a special token
        is its own string). A text of n characters so has at least n / max_token_chars tokens."""
        return max(map(len, self._tok.get_vocab(with_added_tokens=True)), default=1)

    def chars_for_tokens(self, n_tokens: int) -> int:
        """Where a text can be cut before tokenizing without changing its first `n_tokens` tokens: twice
        the characters those can cover, plus 64 tokens' worth, so the word a cut splits (whose tokens may
        change) lies far past them."""
        return (2 * n_tokens + 64) * self.max_token_chars

    def _forged_specials(self, messages, text, add_generation_prompt, tools, template_kwargs) -> set[int]:
        """Positions of special-token strings in `text` that came from message fields, found by
        rendering once more with those strings defused (same length, so positions line up)."""
        if not any(self._special_re.search(v) for m in messages for v in m.values() if isinstance(v, str)):
            return set()

        def defuse(v: Any) -> Any:
            return self._special_re.sub(lambda m: "\x00" + m.group(0)[1:], v) if isinstance(v, str) else v

        safe = [{k: defuse(v) for k, v in m.items()} for m in messages]
        defused = self.apply_chat_template(safe, add_generation_prompt, tools=tools, **template_kwargs)
        if len(defused) != len(text):  # a template that reshapes content: fall back to treating all as text
            return {m.start() for m in self._special_re.finditer(text)}
        real = {m.start() for m in self._special_re.finditer(text)}
        return real - {m.start() for m in self._special_re.finditer(defused)}

    def _encode_rendered(self, text: str, lo: int, hi: int, forged: set[int],
                         trusted: list) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, char offsets in `text`) of text[lo:hi]. Added tokens split the text before BPE, so
        encoding the pieces between trusted specials equals encoding the whole string."""
        if not any(lo <= p < hi for p in forged):
            enc = self._tok.encode(text[lo:hi], add_special_tokens=False)
            return enc.ids, (enc.offsets if lo == 0 else [(a + lo, b + lo) for a, b in enc.offsets])
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        pos = lo
        for m in [*(m for m in trusted if lo <= m.start() and m.end() <= hi), None]:
            end = m.start() if m is not None else hi
            if end > pos:
                enc = self._literal.encode(text[pos:end], add_special_tokens=False)
                ids.extend(enc.ids)
                offsets.extend((a + pos, b + pos) for a, b in enc.offsets)
            if m is not None:
                ids.append(self._tok.token_to_id(m.group(0)))
                offsets.append((m.start(), m.end()))
                pos = m.end()
        return ids, offsets

    @staticmethod
    def _assistant_spans(text: str, trusted: list, label_turn_newline: bool) -> list[tuple[int, int]]:
        spans = []
        for i, m in enumerate(trusted):
            if m.group(0) != IM_START or not text.startswith(ASSISTANT_HEADER, m.start()):
                continue
            start = m.start() + len(ASSISTANT_HEADER)
            end = next((n.end() for n in trusted[i + 1:] if n.group(0) == IM_END), len(text))
            if label_turn_newline and text.startswith("\n", end):
                end += 1
            spans.append((start, end))
        return spans

    # ----- persistence ------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` + `tokenizer_config.json` (HF-loadable) into `directory`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(out / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **self.special_tokens_map,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 32768,
            "chat_template": self.chat_template,
            "added_tokens_decoder": {
                str(i): {"content": t.content, "special": t.special, "lstrip": t.lstrip, "rstrip": t.rstrip,
                         "normalized": t.normalized, "single_word": t.single_word}
                for i, t in sorted(self._tok.get_added_tokens_decoder().items())
            },
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        return out

    @classmethod
    def load(cls, path: str | Path) -> "MiniMindTokenizer":
        """Load from a folder containing tokenizer.json, or from a tokenizer.json path."""
        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise TokenizerError(f"{file}: tokenizer file not found")
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON/schema
            raise TokenizerError(f"{file}: not a valid tokenizer.json ({e})") from e
        template, specials = _read_tokenizer_config(file.parent)
        return cls(tok, source=str(file), chat_template=template, special_tokens_map=specials)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, MiniMindTokenizer) and self._tok.to_str() == other._tok.to_str()
                and self.chat_template == other.chat_template)

    def __repr__(self) -> str:
        return f"MiniMindTokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def render_chat(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                chat_template: str | None = None, **template_kwargs: Any) -> str:
    """A chat rendered by `chat_template` (default: the built-in CHAT_TEMPLATE) without a tokenizer."""
    return render(chat_template or CHAT_TEMPLATE, messages, add_generation_prompt=add_generation_prompt,
                  special_tokens={"bos_token": IM_START, "eos_token": IM_END, "pad_token": ENDOFTEXT,
                                  "unk_token": ENDOFTEXT}, **template_kwargs)


def _read_tokenizer_config(folder: Path) -> tuple[str | None, dict[str, str]]:
    """(chat_template, special token strings) of a tokenizer folder: chat_template.jinja (transformers
    >= 4.43 writes it) or tokenizer_config.json's chat_template (a string, or named templates)."""
    template: str | None = None
    specials: dict[str, str] = {}
    cfg_file = folder / "tokenizer_config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{cfg_file}: not valid JSON ({e})") from e
        raw = cfg.get("chat_template")
        if isinstance(raw, list):
            raw = next((t.get("template") for t in raw if t.get("name") == "default"), None)
        template = raw if isinstance(raw, str) else None
        for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
            v = cfg.get(k)
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str):
                specials[k] = v
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    return template, specials


def _check_specials(tok: Tokenizer, source: str) -> None:
    """Every MiniMind checkpoint assumes these exact ids; refuse anything else early."""
    for want, token in enumerate(SPECIAL_TOKENS):
        got = tok.token_to_id(token)
        if got != want:
            raise TokenizerError(
                f"{source}: special token {token!r} has id {got}, expected {want}"
            )
