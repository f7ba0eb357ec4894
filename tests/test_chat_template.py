"""Chat templates: the folder's own Jinja template gives transformers' ids; masks on whole-string ids.

The two templates below are written for the tests with the structure of MiniMind's own: v2 (a
default system message when the chat has none, tools, tool calls) and MiniMind-3 (every assistant
turn opens a `<think>` block, reasoning_content, generation prompt with an empty think block).
"""
from __future__ import annotations

import json

import pytest
from tokenizers import AddedToken

from minimind.config import preset
from minimind.tokenizer import (CHAT_TEMPLATE, MiniMindTokenizer, TokenizerMismatchError, check_fits,
                                train_tokenizer)

transformers = pytest.importorskip("transformers")

TOOLS_HEAD = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}")
TOOL_CALLS = (
    "{%- if message.tool_calls %}{%- for tc in message.tool_calls %}"
    "{%- if (loop.first and content) or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{%- if tc.function %}{%- set tc = tc.function %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + tc.name + '\", \"arguments\": ' }}"
    "{%- if tc.arguments is string %}{{- tc.arguments }}{%- else %}{{- tc.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}")
TOOL_RESULT = (
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}")
V2_STYLE = (
    TOOLS_HEAD + "{%- else %}{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{%- endif %}{%- endif %}\n"
    "{%- for message in messages %}{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' + content }}" + TOOL_CALLS +
    "{{- '<|im_end|>\\n' }}" + TOOL_RESULT + "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
V3_STYLE = (
    TOOLS_HEAD + "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}\n"
    "{%- for message in messages %}{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning = message.reasoning_content if message.reasoning_content is string else '' %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    + TOOL_CALLS + "{{- '<|im_end|>\\n' }}" + TOOL_RESULT + "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if open_thinking is defined and open_thinking is true %}{{- '<think>\\n' }}"
    "{%- else %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")

WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CHATS = {
    "user-only": [{"role": "user", "content": "What is 2 + 3?"}],
    "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello 12"}],
    "multi-turn": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  two spaces"},
                   {"role": "user", "content": "b"}, {"role": "assistant", "content": "c\n"}],
    "reasoning": [{"role": "user", "content": "7*8?"},
                  {"role": "assistant", "content": "56", "reasoning_content": "7*8 is 56"}],
    "tool-call": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
                  {"role": "tool", "content": "{\"temp\": 21}"},
                  {"role": "assistant", "content": "21 degrees."}],
}


@pytest.fixture(scope="module")
def base():
    texts = [json.dumps(c, ensure_ascii=False) for c in CHATS.values()] * 20 + ["<think> </think> tool_call"]
    tok = train_tokenizer(texts, vocab_size=420)
    backend = tok.backend
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t in ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
                                  "<think>", "</think>")])
    return MiniMindTokenizer(backend)


def _folder(base, tmp_path, template):
    MiniMindTokenizer(base.backend, chat_template=template).save(tmp_path)
    return MiniMindTokenizer.load(tmp_path), transformers.AutoTokenizer.from_pretrained(str(tmp_path))


def _hf_ids(hf, chat, **kw):
    out = hf.apply_chat_template(chat, tokenize=True, **kw)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


@pytest.mark.parametrize("style", ["v2", "v3", "builtin"])
@pytest.mark.parametrize("chat", list(CHATS))
@pytest.mark.parametrize("gen", [False, True])
def test_ids_equal_transformers(base, tmp_path, style, chat, gen):
    template = {"v2": V2_STYLE, "v3": V3_STYLE, "builtin": CHAT_TEMPLATE}[style]
    ours, hf = _folder(base, tmp_path, template)
    msgs = CHATS[chat][:-1] if gen and len(CHATS[chat]) > 1 else CHATS[chat]
    tools = [WEATHER] if chat == "tool-call" else None
    assert ours.apply_chat_template(msgs, add_generation_prompt=gen, tools=tools) == hf.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=gen, tools=tools)
    assert ours.encode_chat(msgs, add_generation_prompt=gen, tools=tools) == _hf_ids(
        hf, msgs, add_generation_prompt=gen, tools=tools)


def test_builtin_template_renders_a_tool_schema_the_same_whatever_its_key_order(base, tmp_path):
    """langchain-openai writes `properties, required, type`; the openai examples `type, properties,
    required`: the built-in template writes both (and transformers with the same template) one way."""
    params = {"city": {"type": "string", "description": "City name"}}
    as_openai = {"type": "function", "function": {"name": "weather", "description": "Weather of a city", "parameters": {
        "type": "object", "properties": params, "required": ["city"]}}}
    as_langchain = {"function": {"parameters": {"properties": params, "required": ["city"], "type": "object"},
                                 "description": "Weather of a city", "name": "weather"}, "type": "function"}
    ours, hf = _folder(base, tmp_path, CHAT_TEMPLATE)
    msgs = CHATS["user-only"]
    a = ours.apply_chat_template(msgs, add_generation_prompt=True, tools=[as_openai])
    assert a == ours.apply_chat_template(msgs, add_generation_prompt=True, tools=[as_langchain])
    assert a == hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, tools=[as_langchain])
    assert json.dumps(as_openai, sort_keys=True) in a


def test_template_variables_and_default_system(base, tmp_path):
    ours, hf = _folder(base, tmp_path, V3_STYLE)
    msgs = CHATS["user-only"]
    assert ours.apply_chat_template(msgs, add_generation_prompt=True, open_thinking=True).endswith(
        "<|im_start|>assistant\n<think>\n")
    assert ours.encode_chat(msgs, add_generation_prompt=True, open_thinking=True) == _hf_ids(
        hf, msgs, add_generation_prompt=True, open_thinking=True)
    assert ours.default_system_prompt is None
    v2, _ = _folder(base, tmp_path / "v2", V2_STYLE)
    assert v2.default_system_prompt == "You are a helpful assistant"


@pytest.mark.parametrize("newline", [False, True])
def test_masks_on_whole_string_ids(base, tmp_path, newline):
    ours, _ = _folder(base, tmp_path, V3_STYLE)
    msgs = CHATS["multi-turn"]
    ids, mask = ours.encode_chat_masked(msgs, label_turn_newline=newline)
    assert ids == ours.encode(ours.apply_chat_template(msgs))  # the ids inference sees
    # every labelled run decodes to an assistant turn (think block + content) and its <|im_end|>
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    texts = [ours.decode(r, skip_special_tokens=False) for r in runs]
    end = "<|im_end|>\n" if newline else "<|im_end|>"
    assert [t.endswith(end) for t in texts] == [True, True]
    assert "two spaces" in texts[0] and texts[1].startswith(("<think>", "\n<think>"))
    # last_turn_only keeps only the final reply (DPO)
    _, last = ours.encode_chat_masked(msgs, label_turn_newline=newline, last_turn_only=True)
    assert sum(last) == len(runs[-1]) and sum(last) < sum(mask)


def test_check_fits_names_both_sides_and_flag(base):
    cfg = preset("tiny", vocab_size=6400)
    with pytest.raises(TokenizerMismatchError) as e:
        check_fits(base, cfg, tokenizer_flag="--tokenizer")
    msg = str(e.value)
    assert f"{base.vocab_size} tokens" in msg and "6400" in msg and "--tokenizer" in msg
    with pytest.raises(TokenizerMismatchError, match="eos_token_id is 5"):
        check_fits(base, preset("tiny", vocab_size=base.vocab_size, eos_token_id=5))
    check_fits(base, preset("tiny", vocab_size=base.vocab_size))  # fits: no error
