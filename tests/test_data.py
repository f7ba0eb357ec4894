"""Readers (validation + file:line reports), cached datasets, masks, collate, BatchIterator."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from minimind.data import (
    BatchIterator,
    DataError,
    DPODataset,
    PretrainDataset,
    RLPromptDataset,
    SFTDataset,
    collate_lm,
    gsm8k_final_answer,
    read_conversations,
    read_dpo,
    read_math,
    read_pretrain,
)
from minimind.data.datasets import prompt_key
from minimind.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tok():
    corpus = ["hello world, what is 2 + 3? it is 5.", "the cat sat on the mat",
              "system user assistant be brief", "中文 text ok"] * 30
    return train_tokenizer(corpus, vocab_size=320)


def write_lines(path, lines):
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l, ensure_ascii=False)
                              for l in lines) + "\n", encoding="utf-8")
    return path


def conv(*pairs):
    return {"conversations": [{"role": r, "content": c} for r, c in pairs]}


# ----- readers ----------------------------------------------------------------------------

def test_pretrain_reader_reports_each_bad_line(tmp_path, caplog):
    f = write_lines(tmp_path / "p.jsonl", [
        {"text": "good one"},                 # 1
        "{not json",                          # 2
        {"txt": "typo"},                      # 3
        "",                                   # 4 blank: not a record
        {"text": 42},                         # 5
        {"text": "   "},                      # 6
        ["a", "list"],                        # 7
        {"text": "good two", "extra": 1},     # 8
    ])
    with caplog.at_level(logging.WARNING):
        res = read_pretrain(f)
    assert res.records == ["good one", "good two"]
    r = res.report
    assert (r.n_ok, r.n_bad) == (2, 5)
    assert r.issues[0].startswith(f"{f}:2: bad JSON")
    assert r.issues[1] == f"{f}:3: missing field 'text'"
    assert r.issues[2] == f"{f}:5: field 'text' must be a string, got int"
    assert r.issues[3] == f"{f}:6: field 'text' is empty"
    assert r.issues[4] == f"{f}:7: expected a JSON object, got list"
    assert "skipped 5 bad record(s)" in caplog.text and f"{f}:2" in caplog.text


def test_strict_raises_first_bad_line(tmp_path):
    f = write_lines(tmp_path / "p.jsonl", [{"text": "ok"}, {"text": "ok"}, {"nope": 1}, "{x"])
    with pytest.raises(DataError, match=rf"^{f}:3: missing field 'text'$"):
        read_pretrain(f, strict=True)


def test_conversation_reader_validation(tmp_path):
    f = write_lines(tmp_path / "sft.jsonl", [
        conv(("user", "hi"), ("assistant", "hello")),
        conv(("user", "hi"), ("robot", "beep")),
        conv(("user", "hi"), ("assistant", "")),
        {"conversations": "hi"},
        {"conversations": [{"role": "user"}]},
        conv(("user", "only a question")),
        {"conversations": [{"role": "user", "content": ["x"]}]},
    ])
    res = read_conversations(f)
    assert res.records == [[{"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "hello"}]]
    msgs = res.report.issues
    assert msgs[0].startswith(f"{f}:2: conversations[1] unknown role 'robot'")
    assert msgs[1] == f"{f}:3: conversations[1] has empty content"
    assert msgs[2] == f"{f}:4: field 'conversations' must be a list of messages, got str"
    assert msgs[3] == f"{f}:5: conversations[0] missing field 'content'"
    assert msgs[4].startswith(f"{f}:6: conversation has no assistant message")
    assert msgs[5] == f"{f}:7: conversations[0] field 'content' must be a string, got list"
    # RL-chat prompts legitimately end with the user turn, or with an empty assistant turn (rlaif.jsonl)
    assert read_conversations(f, require_assistant=False).report.n_ok == 3


def test_dpo_reader(tmp_path):
    u = {"role": "user", "content": "2+2?"}
    good = {"chosen": [u, {"role": "assistant", "content": "4"}],
            "rejected": [u, {"role": "assistant", "content": "5"}]}
    other = {"chosen": good["chosen"],
             "rejected": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "5"}]}
    f = write_lines(tmp_path / "dpo.jsonl", [good, other, {"chosen": good["chosen"]}])
    res = read_dpo(f)
    assert len(res.records) == 1 and res.records[0].rejected[-1]["content"] == "5"
    assert res.report.issues == [f"{f}:2: 'chosen' and 'rejected' have different prompts",
                                 f"{f}:3: missing field 'rejected'"]


def test_math_reader_and_gsm8k(tmp_path):
    assert gsm8k_final_answer("She pays 3 * 400 = 1,200 dollars.\n#### 1,200") == "1200"
    assert gsm8k_final_answer("x\n#### -7.5") == "-7.5"
    with pytest.raises(ValueError):
        gsm8k_final_answer("no marker 12")
    f = write_lines(tmp_path / "m.jsonl", [
        {"question": "Q1?", "answer": "steps\n#### 1,234"},
        {"prompt": "Q2?", "answer": 7},
        {"prompt": "Q3?", "answer": "42"},
        {"prompt": "Q4?"},
        {"answer": "1"},
        {"prompt": "Q6?", "answer": "bad\n#### "},
        {"prompt": "Q7?", "answer": True},
    ])
    res = read_math(f)
    assert [(r.prompt, r.answer) for r in res.records] == [("Q1?", "1234"), ("Q2?", "7"),
                                                            ("Q3?", "42")]
    assert res.records[0].solution == "steps\n#### 1,234"
    assert res.report.issues == [
        f"{f}:4: missing field 'answer'",
        f"{f}:5: missing field 'prompt' (or 'question')",
        f"{f}:6: empty final answer after '####'",
        f"{f}:7: field 'answer' must be a string or number, got bool",
    ]


def test_parquet_rows_validated_with_row_index(tmp_path):
    f = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c", ""]}), f)
    res = read_pretrain(f)
    assert res.records == ["a", "c"]
    assert res.report.issues == [f"{f}:row 1: missing field 'text'", f"{f}:row 3: field 'text' is empty"]
    g = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([conv(("user", "q"), ("assistant", "a")),
                                         conv(("user", "q"), ("bot", "a"))]), g)
    res = read_conversations(g)
    assert len(res.records) == 1 and res.report.issues[0].startswith(f"{g}:row 1: conversations[1] unknown role")


def test_bad_utf8_costs_one_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"text": "bom ok"}\n{"text": "\xff\xfe"}\n{"text": "caf\xc3\xa9"}\n')
    res = read_pretrain(f)
    assert res.records == ["bom ok", "café"]
    assert res.report.issues == [f"{f}:2: invalid UTF-8 at byte 10"]


def test_sft_from_parquet(tok, tmp_path, caplog):
    rows = [conv(("user", "hi"), ("assistant", "hello")), conv(("user", "hi"), ("bot", "x"))]
    f = tmp_path / "sft.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    ds = SFTDataset(f, tok, cache_dir=tmp_path / "c")
    assert len(ds) == 1 and ds.cache.meta["read"]["n_bad"] == 1
    assert ds[0]["input_ids"].tolist() == tok.encode_chat(rows[0]["conversations"])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = SFTDataset(f, tok, cache_dir=tmp_path / "c")
    assert again.cache.hit and "1 bad record(s)" in caplog.text  # not hidden by the cache


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        read_pretrain(tmp_path / "nothere.jsonl")


# ----- pretrain packing + cache -----------------------------------------------------------

def test_pretrain_packing_and_cache(tok, tmp_path):
    docs = ["hello world", "the cat sat on the mat", "what is 2 + 3?"]
    f = write_lines(tmp_path / "pre.jsonl", [{"text": d} for d in docs])
    cache = tmp_path / "cache"
    ds = PretrainDataset(f, tok, seq_len=8, cache_dir=cache)
    expected = [t for d in docs for t in tok.encode(d) + [tok.eos_id]]
    assert not ds.cache.hit
    assert ds.stream.tolist() == expected
    assert len(ds) == -(-len(expected) // 8)
    got = np.concatenate([ds[i]["input_ids"] for i in range(len(ds))])
    assert got[: len(expected)].tolist() == expected and (got[len(expected):] == 0).all()
    last = ds[len(ds) - 1]
    n_real = len(expected) - 8 * (len(ds) - 1)
    assert (last["labels"][:n_real] == last["input_ids"][:n_real]).all()
    assert (last["labels"][n_real:] == -100).all()
    assert all(len(ds[i]["input_ids"]) == 8 for i in range(len(ds)))

    # second load: same file reused (memory-mapped), identical arrays; seq_len is not part
    # of the key because packing happens on read
    again = PretrainDataset(f, tok, seq_len=5, cache_dir=cache)
    assert again.cache.hit and again.cache.path == ds.cache.path
    np.testing.assert_array_equal(again.stream, ds.stream)
    assert len(os.listdir(cache)) == 1

    # touching the data invalidates the cache
    write_lines(f, [{"text": d} for d in docs + ["new doc"]])
    changed = PretrainDataset(f, tok, seq_len=8, cache_dir=cache)
    assert not changed.cache.hit and changed.cache.path != ds.cache.path
    assert len(changed.stream) > len(ds.stream)


def test_cache_key_depends_on_tokenizer(tok, tmp_path):
    f = write_lines(tmp_path / "pre.jsonl", [{"text": "hello world"}])
    other = train_tokenizer(["completely different corpus"] * 10, vocab_size=280)
    a = PretrainDataset(f, tok, seq_len=4, cache_dir=tmp_path / "c")
    b = PretrainDataset(f, other, seq_len=4, cache_dir=tmp_path / "c")
    assert not b.cache.hit and a.cache.path != b.cache.path


def test_corrupt_cache_is_rebuilt(tok, tmp_path):
    f = write_lines(tmp_path / "pre.jsonl", [{"text": "hello world"}])
    a = PretrainDataset(f, tok, seq_len=4, cache_dir=tmp_path / "c")
    ref = a.stream.copy()
    del a
    (tmp_path / "c" / os.listdir(tmp_path / "c")[0]).write_bytes(b"garbage")
    b = PretrainDataset(f, tok, seq_len=4, cache_dir=tmp_path / "c")
    assert not b.cache.hit and b.stream.tolist() == ref.tolist()


# ----- SFT masks --------------------------------------------------------------------------

def test_sft_exact_assistant_mask(tok, tmp_path):
    c = conv(("system", "be brief"), ("user", "what is 2 + 3?"), ("assistant", "it is 5."),
             ("user", "hello"), ("assistant", "hello world"))
    f = write_lines(tmp_path / "sft.jsonl", [c])
    ds = SFTDataset(f, tok, max_len=512, cache_dir=tmp_path / "c")
    item = ds[0]
    # build the expectation by hand, piece by piece
    ids, labels = [], []
    for m in c["conversations"]:
        header = [1] + tok.encode(m["role"] + "\n")
        body = tok.encode(m["content"]) + [2]
        nl = tok.encode("\n")
        ids += header + body + nl
        train = m["role"] == "assistant"
        labels += [-100] * len(header) + (body if train else [-100] * len(body)) + [-100] * len(nl)
    assert item["input_ids"].tolist() == ids
    assert item["labels"].tolist() == labels
    assert ids == tok.encode(tok.apply_chat_template(c["conversations"]))
    kept = [t for t in item["labels"].tolist() if t != -100]
    assert tok.decode(kept, skip_special_tokens=False) == "it is 5.<|im_end|>hello world<|im_end|>"


def test_sft_truncation_and_dropping(tok, tmp_path, caplog):
    long_user = "the cat sat on the mat " * 20
    f = write_lines(tmp_path / "sft.jsonl", [
        conv(("user", "hi"), ("assistant", "hello world " * 30)),
        conv(("user", long_user), ("assistant", "ok")),   # assistant cut away entirely
    ])
    with caplog.at_level(logging.WARNING):
        ds = SFTDataset(f, tok, max_len=16, cache_dir=tmp_path / "c")
    assert len(ds) == 1 and len(ds[0]["input_ids"]) == 16
    assert "1 conversation(s) dropped" in caplog.text
    assert ds.cache.meta["n_truncated_away"] == 1


def test_sft_collate_right_pads(tok, tmp_path):
    f = write_lines(tmp_path / "sft.jsonl", [conv(("user", "hi"), ("assistant", "a")),
                                            conv(("user", "hello world"), ("assistant", "the cat sat"))])
    ds = SFTDataset(f, tok, cache_dir=tmp_path / "c")
    b = collate_lm([ds[0], ds[1]])
    n0 = len(ds[0]["input_ids"])
    assert b["input_ids"].shape == b["labels"].shape == (2, len(ds[1]["input_ids"]))
    assert b["input_ids"].dtype == torch.long
    assert (b["input_ids"][0, n0:] == 0).all() and (b["labels"][0, n0:] == -100).all()
    assert b["attention_mask"][0].sum() == n0 and b["attention_mask"][1].all()
    assert b["input_ids"][0, :n0].tolist() == ds[0]["input_ids"].tolist()


# ----- DPO --------------------------------------------------------------------------------

def test_dpo_response_masks(tok, tmp_path):
    u = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 2 + 3?"},
         {"role": "assistant", "content": "it is 5."}, {"role": "user", "content": "and 2 + 2?"}]
    pair = {"chosen": u + [{"role": "assistant", "content": "it is 4"}],
            "rejected": u + [{"role": "assistant", "content": "the cat"}]}
    f = write_lines(tmp_path / "dpo.jsonl", [pair])
    ds = DPODataset(f, tok, cache_dir=tmp_path / "c")
    it = ds[0]
    prompt = tok.encode_chat(u)
    for side, text in (("chosen", "it is 4"), ("rejected", "the cat")):
        ids, mask = it[f"{side}_ids"].tolist(), it[f"{side}_mask"].tolist()
        assert ids[: len(prompt)] == prompt and not any(mask[: len(prompt)])
        resp = [t for t, m in zip(ids, mask) if m]
        assert tok.decode(resp, skip_special_tokens=False) == text + "<|im_end|>"
    b = DPODataset.collate([it, it])
    T = max(len(it["chosen_ids"]), len(it["rejected_ids"]))
    assert b["chosen_ids"].shape == b["rejected_mask"].shape == (2, T)
    assert b["chosen_mask"].sum() == 2 * it["chosen_mask"].sum()


# ----- RL prompts -------------------------------------------------------------------------

def test_rl_prompts(tmp_path):
    f = write_lines(tmp_path / "rl.jsonl", [
        {"prompt": "What is 2 + 3?", "answer": "5"},
        {"question": "GSM?", "answer": "a bit\n#### 1,000"},
        conv(("user", "chat q"), ("assistant", "chat a")),
        {"prompt": "", "answer": "1"},
    ])
    ds = RLPromptDataset(f)
    assert len(ds) == 3
    assert ds[0].prompt == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    assert [p.answer for p in ds] == ["5", "1000", "chat a"]
    assert ds[0].key == prompt_key(ds[0].prompt) and len({p.key for p in ds}) == 3
    mem = RLPromptDataset([{"prompt": "What is 2 + 3?", "answer": 5}])
    assert mem[0].key == ds[0].key and mem[0].answer == "5"  # stable across sources/runs
    sys = RLPromptDataset([{"prompt": "Q", "answer": "1"}], system_prompt="S")
    assert sys[0].prompt.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ")
    assert ds.driver_prompts()[1] == {"prompt": ds[1].prompt, "key": ds[1].key, "answer": "1000"}
    with pytest.raises(DataError, match=r"<records>:1: missing field 'answer'"):
        RLPromptDataset([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], strict=True)


# ----- BatchIterator ----------------------------------------------------------------------

class Range:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def take(it, k):
    return [it.next_batch() for _ in range(k)]


def test_batch_iterator_epochs_cover_and_reshuffle():
    it = BatchIterator(Range(10), batch_size=3, seed=7)
    assert len(it) == 4
    e0 = [x for b in it for x in b]
    e1 = [x for b in it for x in b]
    assert sorted(e0) == sorted(e1) == list(range(10))
    assert e0 != e1  # reshuffled with seed + epoch
    assert it.state_dict()["epoch"] == 2 and it.state_dict()["index"] == 0
    again = BatchIterator(Range(10), batch_size=3, seed=7)
    assert [x for b in again for x in b] == e0  # deterministic for a seed
    assert [x for b in BatchIterator(Range(10), 3, seed=8) for x in b] != e0
    dl = BatchIterator(Range(10), batch_size=3, seed=7, drop_last=True)
    assert len(dl) == 3 and all(len(b) == 3 for b in dl)


@pytest.mark.parametrize("stop_after", [1, 2, 4, 5, 8, 9])  # 4 and 8 are epoch boundaries
def test_batch_iterator_resume_is_exact(stop_after):
    ref = take(BatchIterator(Range(10), batch_size=3, seed=1), 14)
    a = BatchIterator(Range(10), batch_size=3, seed=1)
    first = take(a, stop_after)
    state = json.loads(json.dumps(a.state_dict()))  # survives a checkpoint round trip
    b = BatchIterator(Range(10), batch_size=3, seed=1)
    b.load_state_dict(state)
    assert first + take(b, 14 - stop_after) == ref


def test_batch_iterator_resume_at_epoch_boundary_runs_full_epoch():
    a = BatchIterator(Range(6), batch_size=2, seed=0)
    list(a)  # finish epoch 0
    b = BatchIterator(Range(6), batch_size=2, seed=0)
    b.load_state_dict(a.state_dict())
    assert len(list(b)) == 3  # not an empty remainder


def test_batch_iterator_rejects_mismatched_state_and_empty():
    a = BatchIterator(Range(10), batch_size=3, seed=1)
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(Range(10), batch_size=4, seed=1).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="n=10"):
        BatchIterator(Range(11), batch_size=3, seed=1).load_state_dict(a.state_dict())
    with pytest.raises(ValueError):
        BatchIterator(Range(2), batch_size=3, drop_last=True)


def test_a_long_line_cut_before_tokenizing_still_fills_its_block(tok, tmp_path):
    """per_line: a line is cut before it is tokenized (a 10 MB line costs what a block costs), never so
    short that its block loses tokens, even where a token stands for 10 characters."""
    text = " assistant" * 100_000   # 1 MB, one 10-character token per word
    f = write_lines(tmp_path / "pre.jsonl", [{"text": text}, {"text": "hello world"}])
    ds = PretrainDataset(f, tok, seq_len=16, per_line=True)
    assert ds[0]["input_ids"].tolist() == [tok.bos_id] + tok.encode(text[:1000])[:14] + [tok.eos_id]


def test_batch_iterator_with_dataset_collate(tok, tmp_path):
    f = write_lines(tmp_path / "pre.jsonl", [{"text": "hello world the cat sat"}] * 5)
    ds = PretrainDataset(f, tok, seq_len=8, cache_dir=tmp_path / "c")
    b = BatchIterator(ds, batch_size=2, seed=0).next_batch()
    assert b["input_ids"].shape == (2, 8) and b["labels"].dtype == torch.long
