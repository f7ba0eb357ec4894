"""Streaming text of one choice: incremental detokenization and stop strings.

Byte-level BPE splits a multi-byte character across tokens, so a chunk of tokens is only turned
into text once it decodes without a trailing replacement character. Text that could still be the
start of a stop string is held back from the stream until it is known not to be one.
"""
from __future__ import annotations

import codecs
from functools import lru_cache

REPLACEMENT = "\ufffd"
MAX_HELD_TOKENS = 4
"""A UTF-8 character has at most 4 bytes: after that many undecodable tokens, emit them anyway."""


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode (the alphabet of byte-level BPE vocabularies)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tok) -> list[bytes] | None:
    """The bytes each token id stands for (b"" for special tokens), or None when the tokenizer is not
    byte-level BPE. Checked against `tok.decode` for every id, so streaming by bytes is exact."""
    dec = _byte_decoder()
    table = []
    for i in range(tok.vocab_size):
        s = tok.id_to_token(i) or ""
        if i in (tok.pad_id, tok.bos_id, tok.eos_id) or tok.decode([i]) == "":
            table.append(b"")
            continue
        if any(c not in dec for c in s):
            return None
        b = bytes(dec[c] for c in s)
        if b.decode("utf-8", "replace") != tok.decode([i]):
            return None
        table.append(b)
    return table


class ChoiceText:
    def __init__(self, tok, stop: tuple[str, ...], table: list[bytes] | None = None):
        self.tok = tok
        self.stop = stop
        self.table = table
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.ids: list[int] = []
        self.text = ""        # decoded so far (stop string removed once found)
        self.sent = 0         # characters of `text` already handed to the client
        self._start = 0       # first token id not yet in `text`
        self.stopped = False  # a stop string was found

    def add(self, token: int) -> None:
        """Append a generated token (not a stop token); sets `stopped` on a stop string."""
        self.ids.append(token)
        old = len(self.text)
        if self.table is not None:   # byte-level BPE: an incremental UTF-8 decoder is exact
            self.text += self._utf8.decode(self.table[token])
        else:
            pending = self.ids[self._start:]
            piece = self.tok.decode(pending)
            if piece.endswith(REPLACEMENT) and len(pending) < MAX_HELD_TOKENS:
                return
            self.text += piece
            self._start = len(self.ids)
        if self.stop:
            longest = max(map(len, self.stop))
            window_start = max(0, old - longest + 1)
            hits = [i for i in (self.text.find(s, window_start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.stopped = True

    def flush(self) -> None:
        """End of the choice: decode whatever tokens are still held."""
        if self.stopped:
            return
        if self.table is not None:
            self.text += self._utf8.decode(b"", final=True)
        elif self._start < len(self.ids):
            self.text += self.tok.decode(self.ids[self._start:])
            self._start = len(self.ids)

    def delta(self, final: bool = False) -> str:
        """New text safe to stream now (all of it when `final`)."""
        end = len(self.text)
        if not final and self.stop:
            end -= self._held_back()
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best
