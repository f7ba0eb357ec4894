"""MiniMind-3 data lines keep their fields and render through the template; reports, layouts, limits."""
from __future__ import annotations

import json

from minimind.data import IGNORE_INDEX, PretrainDataset, RLPromptDataset, SFTDataset
from minimind.tokenizer import train_tokenizer

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
LINES = [
    {"conversations": [{"role": "system", "content": "", "tools": json.dumps(TOOLS)},
                       {"role": "user", "content": "1+2?"},
                       {"role": "assistant", "content": "", "tool_calls": json.dumps(
                           [{"name": "add", "arguments": {"a": 1, "b": 2}}])},
                       {"role": "tool", "content": "3"}, {"role": "assistant", "content": "3"}]},
    {"conversations": [{"role": "user", "content": "7*8?"},
                       {"role": "assistant", "content": "56", "reasoning_content": "7*8=56"}]},
]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_minimind3_sft_lines_round_trip(tmp_path):
    tok = train_tokenizer([json.dumps(LINES)] * 30, vocab_size=400)
    ds = SFTDataset(_write(tmp_path / "sft.jsonl", LINES), tok, max_len=512, cache_dir=tmp_path / "c",
                    label_turn_newline=True)
    assert len(ds) == 2
    for i, row in enumerate(LINES):
        msgs = [{k: (json.loads(v) if k in ("tools", "tool_calls") else v) for k, v in m.items() if k != "tools"}
                for m in row["conversations"]]
        text = tok.apply_chat_template(msgs, tools=TOOLS if i == 0 else None)
        ids, labels = ds[i]["input_ids"].tolist(), ds[i]["labels"].tolist()
        assert ids == tok.encode(text)
        kept = tok.decode([t for t, l in zip(ids, labels) if l != IGNORE_INDEX], skip_special_tokens=False)
        if i == 0:
            assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>\n' in kept
            assert "# Tools" in text and "<tool_response>\n3\n</tool_response>" in text
            assert kept.endswith("3<|im_end|>\n") and "tool_response" not in kept
        else:
            assert kept == "<think>\n7*8=56\n</think>\n\n56<|im_end|>\n"


def test_report_file_pretrain_layouts_and_long_lines(tmp_path, capsys):
    tok = train_tokenizer(["hello world"] * 30, vocab_size=300)
    rows = [{"text": "hello"}, "{bad", {"text": ""}, {"text": "x" * 2_000_000}, {"text": 5}]
    f = _write(tmp_path / "pre.jsonl", rows)
    ds = PretrainDataset(f, tok, seq_len=16, cache_dir=tmp_path / "c", per_line=True,
                         report_path=tmp_path / "run" / "skipped_lines.jsonl")
    assert ds[0]["input_ids"].tolist()[:1] == [tok.bos_id] and tok.eos_id in ds[0]["input_ids"].tolist()
    assert ds[0]["labels"].tolist()[-1] == IGNORE_INDEX and len(ds[0]["input_ids"]) == 16
    assert len(ds[1]["input_ids"]) == 16 and ds[1]["input_ids"].tolist()[-1] == tok.eos_id  # cut, not whole
    lines = [json.loads(x) for x in (tmp_path / "run" / "skipped_lines.jsonl").read_text().splitlines()]
    assert [x["location"].rsplit(":", 1)[1] for x in lines] == ["2", "3", "5"]
    assert "skipped 3 bad record(s)" in capsys.readouterr().err


def test_rl_prompts_template_system_and_length_limit(tmp_path):
    v2 = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}"
          "{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    base = train_tokenizer(["question answer"] * 30, vocab_size=300)
    tok = type(base)(base.backend, chat_template=v2)
    rows = [{"conversations": [{"role": "user", "content": "short"}, {"role": "assistant", "content": ""}]},
            {"conversations": [{"role": "user", "content": "long " * 200}, {"role": "assistant", "content": ""}]}]
    f = _write(tmp_path / "rlaif.jsonl", rows)
    ds = RLPromptDataset(f, tokenizer=tok, max_prompt_tokens=64, report_path=tmp_path / "skipped.jsonl")
    assert len(ds) == 1 and ds[0].prompt.startswith("<|im_start|>system\nYou are a helpful assistant")
    bad = json.loads((tmp_path / "skipped.jsonl").read_text())
    assert bad["location"].endswith("rlaif.jsonl:2") and "max_prompt_tokens=64" in bad["reason"]
    cut = RLPromptDataset(f, tokenizer=tok, max_prompt_tokens=64, truncate_long_prompts=True)
    assert len(cut) == 2 and len(tok.encode(cut[1].prompt)) == 64 and cut.n_truncated == 1
