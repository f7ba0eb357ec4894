"""MiniMind tokenizer: byte-level BPE (HF `tokenizers`) with MiniMind's ChatML template.

The three special tokens and their ids are fixed by MiniMind and by every checkpoint
trained with it: `<|endoftext|>`=0 (also used as padding), `<|im_start|>`=1 (bos),
`<|im_end|>`=2 (eos). A folder written by `MiniMindTokenizer.save` is loadable both here
and by `transformers.PreTrainedTokenizerFast.from_pretrained` (so an exported model folder
is complete), and a real MiniMind `tokenizer.json` loads here unchanged.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)  # index == required id

# Jinja form of `MiniMindTokenizer.apply_chat_template`, stored in tokenizer_config.json so
# that transformers (and vLLM, which uses it) renders exactly the same prompt string.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable or incompatible; the message names the file."""


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
    """Thin typed wrapper around a `tokenizers.Tokenizer` with MiniMind's specials."""

    def __init__(self, tokenizer: Tokenizer, source: str = "<in memory>"):
        _check_specials(tokenizer, source)
        self._tok = tokenizer
        self.source = source
        # A twin that treats special-token *strings* inside message content as plain text,
        # so a user typing "<|im_end|>" cannot forge a turn boundary in encode_chat.
        self._literal = Tokenizer.from_str(tokenizer.to_str())
        self._literal.encode_special_tokens = True

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
    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
    ) -> str:
        """MiniMind ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message."""
        return render_chat(messages, add_generation_prompt)

    def encode_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
    ) -> list[int]:
        """Token ids of the chat template, built message by message (see encode_chat_masked)."""
        return self.encode_chat_masked(messages, add_generation_prompt)[0]

    def encode_chat_masked(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """(ids, assistant_mask): mask is 1 on assistant content tokens and on the
        assistant's closing `<|im_end|>`, 0 elsewhere (role headers, newlines, others).

        Each piece is encoded on its own so that a token never straddles the header and
        the content: the content tokens are then exactly what the model produces after
        the generation prompt `<|im_start|>assistant\\n` at inference time.
        """
        ids: list[int] = []
        mask: list[int] = []

        def add(piece: list[int], flag: int) -> None:
            ids.extend(piece)
            mask.extend([flag] * len(piece))

        for m in messages:
            is_asst = 1 if m["role"] == "assistant" else 0
            add([self.bos_id], 0)
            add(self._literal.encode(f"{m['role']}\n", add_special_tokens=False).ids, 0)
            add(self._literal.encode(m["content"], add_special_tokens=False).ids, is_asst)
            add([self.eos_id], is_asst)  # learning to stop is part of the answer
            add(self._literal.encode("\n", add_special_tokens=False).ids, 0)
        if add_generation_prompt:
            add([self.bos_id], 0)
            add(self._literal.encode("assistant\n", add_special_tokens=False).ids, 0)
        return ids, mask

    # ----- persistence ------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` + `tokenizer_config.json` (HF-loadable) into `directory`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(out / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": IM_START,
            "eos_token": IM_END,
            "pad_token": ENDOFTEXT,
            "unk_token": ENDOFTEXT,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 32768,
            "chat_template": CHAT_TEMPLATE,
            "added_tokens_decoder": {
                str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                         "normalized": False, "single_word": False}
                for i, t in enumerate(SPECIAL_TOKENS)
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
        return cls(tok, source=str(file))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MiniMindTokenizer) and self._tok.to_str() == other._tok.to_str()

    def __repr__(self) -> str:
        return f"MiniMindTokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def render_chat(
    messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
) -> str:
    """The ChatML string (vocabulary-independent, so usable without a tokenizer)."""
    parts = [f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages]
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def _check_specials(tok: Tokenizer, source: str) -> None:
    """Every MiniMind checkpoint assumes these exact ids; refuse anything else early."""
    for want, token in enumerate(SPECIAL_TOKENS):
        got = tok.token_to_id(token)
        if got != want:
            raise TokenizerError(
                f"{source}: special token {token!r} has id {got}, expected {want}"
            )
