"""MiniMindTokenizer: training, exact round trips, ChatML template, persistence, HF interop."""
from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from minimind.tokenizer import (
    CHAT_TEMPLATE,
    MiniMindTokenizer,
    TokenizerError,
    train_tokenizer,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 12 + 35? 12 + 35 = 47\n#### 47",
    "Tom has 12 apples. He buys 5 bags of 3 apples each.",
    "MiniMind 是一个小型语言模型。你好，世界！",
    "Ünïcödé façade naïve café — “quotes” and emoji 🙂🚀",
    "def f(x):\n    return x * 2  # tabs\tand  spaces",
] * 20

SAMPLES = [
    "",
    "hello world",
    "  leading and trailing spaces  ",
    "numbers 1234567890 and 3.14159 and -42",
    "mixed 中文 text with 12 digits",
    "emoji 🙂 and rare 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 glyphs never seen in training ½ ∑",
    "\n\n\tnewlines\r\nand tabs\t",
    "<|im_start|>user\nhi<|im_end|>\n",
]


@pytest.fixture(scope="module")
def tok() -> MiniMindTokenizer:
    return train_tokenizer(CORPUS, vocab_size=400)


def test_special_ids(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.token_to_id("<|endoftext|>") == 0
    assert tok.token_to_id("<|im_start|>") == 1
    assert tok.token_to_id("<|im_end|>") == 2
    assert 259 <= tok.vocab_size <= 400


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_exact(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_encode_adds_no_specials_and_decode_skips_them(tok):
    ids = tok.encode("hi")
    assert 0 not in ids and 1 not in ids and 2 not in ids
    assert tok.decode([1] + ids + [2]) == "hi"
    assert tok.decode([1] + ids + [2], skip_special_tokens=False) == "<|im_start|>hi<|im_end|>"
    assert tok.batch_decode([ids, tok.encode("yo")]) == ["hi", "yo"]


def test_digits_are_single_tokens(tok):
    # "12", "35", "47" occur 40+ times in the corpus, so BPE would merge them without the
    # Digits step; with it every digit is its own token.
    ids = tok.encode("x 12 + 35 = 47 and 1234567")
    digit_tokens = [tok.decode([i]) for i in ids if any(c.isdigit() for c in tok.decode([i]))]
    assert all(len(t) == 1 for t in digit_tokens), digit_tokens
    assert "".join(digit_tokens) == "1235471234567"


def test_without_split_digits_numbers_merge():
    t = train_tokenizer(["year 2024 2024 2024"] * 50, vocab_size=300, split_digits=False)
    assert len(t.encode("2024")) < 4
    assert t.decode(t.encode("2024 and 7")) == "2024 and 7"


def test_chat_template_exact(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "2 + 3 = 5\n#### 5"},
    ]
    assert tok.apply_chat_template(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n2 + 3 = 5\n#### 5<|im_end|>\n"
    )
    assert tok.apply_chat_template(msgs[:2], add_generation_prompt=True).endswith(
        "What is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_encode_chat_matches_template_and_mask(tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello 12"}]
    ids, mask = tok.encode_chat_masked(msgs)
    assert ids == tok.encode(tok.apply_chat_template(msgs))
    assert ids == tok.encode_chat(msgs)
    # masked tokens decode to exactly the assistant content + its closing <|im_end|>
    kept = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(kept, skip_special_tokens=False) == "hello 12<|im_end|>"
    gen = tok.encode_chat(msgs[:1], add_generation_prompt=True)
    assert tok.decode(gen, skip_special_tokens=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert gen == ids[: len(gen)]  # the prompt is a prefix of the full conversation


def _long_chat(seed: int) -> list[dict]:
    """Turns of 1-300 words from CORPUS (typed turn ends included): long enough that a cut happens."""
    import random

    rng = random.Random(seed)
    words = " ".join(CORPUS[:6]).split(" ") + ["<|im_end|>", "\n"]
    turn = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(1, 300)))  # noqa: E731
    msgs = [{"role": "system", "content": turn()}]
    for _ in range(rng.randint(1, 4)):
        msgs += [{"role": "user", "content": turn()}, {"role": "assistant", "content": turn()}]
    return msgs


@pytest.mark.parametrize("options", [{}, {"last_turn_only": True}, {"label_turn_newline": True}])
def test_a_chat_cut_before_tokenizing_keeps_the_tokens_asked_for(tok, options):
    """max_tokens cuts the rendered text before BPE: the first (keep_end: last) max_tokens ids and mask are
    those of the whole chat, and the mask still marks the right turns (DPO's last one even when it is cut away)."""
    cut = 0
    for seed in range(30):
        msgs = _long_chat(seed)
        ids, mask = tok.encode_chat_masked(msgs, **options)
        for n in (1, 7, 40):
            cut += len(tok.apply_chat_template(msgs)) > tok.chars_for_tokens(n)
            assert tok.encode_chat_masked(msgs, max_tokens=n, **options) == (ids[:n], mask[:n]), (seed, n)
            assert tok.encode_chat_masked(msgs, max_tokens=n, keep_end=True, **options) == (ids[-n:], mask[-n:])
    assert cut > 30   # most of them were cut
    # a text of n characters has at least n / max_token_chars tokens, the bound the cut rests on
    text = " ".join(CORPUS)
    assert len(tok.encode(text)) * tok.max_token_chars >= len(text)


def test_encode_chat_does_not_parse_specials_inside_content(tok):
    msgs = [{"role": "user", "content": "fake<|im_end|>"}]
    ids = tok.encode_chat(msgs)
    assert ids.count(tok.eos_id) == 1  # only the real turn end
    assert tok.decode(ids, skip_special_tokens=False) == tok.apply_chat_template(msgs)


def test_save_load_equal(tok, tmp_path):
    tok.save(tmp_path / "tk")
    assert (tmp_path / "tk" / "tokenizer.json").is_file()
    cfg = json.loads((tmp_path / "tk" / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == CHAT_TEMPLATE and cfg["eos_token"] == "<|im_end|>"
    for path in (tmp_path / "tk", tmp_path / "tk" / "tokenizer.json"):
        loaded = MiniMindTokenizer.load(path)
        assert loaded == tok and loaded.fingerprint == tok.fingerprint
        for s in SAMPLES:
            assert loaded.encode(s) == tok.encode(s)


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(TokenizerError, match="nope"):
        MiniMindTokenizer.load(missing)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match=str(bad).replace("\\", "\\\\")):
        MiniMindTokenizer.load(bad)


def test_load_rejects_wrong_special_ids(tmp_path):
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|im_start|>", "<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    t.train_from_iterator(["abc"] * 10, tr)
    f = tmp_path / "tokenizer.json"
    t.save(str(f))
    with pytest.raises(TokenizerError) as ei:
        MiniMindTokenizer.load(f)
    assert str(f) in str(ei.value) and "<|endoftext|>" in str(ei.value)


def test_loads_minimind_style_tokenizer_json(tmp_path):
    """A MiniMind tokenizer.json: plain ByteLevel (no Digits step), same three specials."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    t.train_from_iterator(CORPUS, tr)
    t.save(str(tmp_path / "tokenizer.json"))
    loaded = MiniMindTokenizer.load(tmp_path)
    assert loaded.decode(loaded.encode("héllo 123")) == "héllo 123"


def test_transformers_loads_saved_folder(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2)
    for s in SAMPLES:
        assert hf.encode(s, add_special_tokens=False) == tok.encode(s)
        assert hf.decode(tok.encode(s)) == tok.decode(tok.encode(s), skip_special_tokens=False)
    msgs = [{"role": "user", "content": "What is 7 * 8?"}]
    rendered = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == tok.apply_chat_template(msgs, add_generation_prompt=True)
