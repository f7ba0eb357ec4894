"""Chat templates: the tokenizer folder's own Jinja `chat_template`, rendered as transformers renders it.

The environment is the one `transformers` (and vLLM, through it) compiles chat templates in: a
sandboxed, immutable Jinja environment with trim_blocks / lstrip_blocks, loop controls, a `tojson`
filter that does not escape HTML, and `raise_exception` / `strftime_now` globals. Messages are given
the `reasoning_content` aliases transformers adds. So a MiniMind folder renders here exactly the
string transformers gives for the same chat.

`MINIMIND_CHAT_TEMPLATE` is the built-in tokenizer's template. It has MiniMind-3's structure (system,
user, assistant with `<think>` reasoning, tools in the system turn, tool calls as
`<tool_call>{json}</tool_call>`, tool results as a user turn of `<tool_response>` blocks), with three
choices of its own: a reasoning block is written only when a message has reasoning (plain chats stay
plain ChatML), the generation prompt opens a `<think>` block only when asked (`open_thinking`), and
tool schemas are written with their keys sorted (`tojson(sort_keys=true)`, which transformers' filter
takes too): one canonical rendering in tool SFT data, rollouts and serving, whatever order a client
writes its JSON schema in (langchain-openai sends `properties, required, type`, the openai examples
`type, properties, required`), so a small model that learned one rendering is not thrown by another.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping, Sequence

MINIMIND_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "{{- '<|im_start|>system\\n' }}\n"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}\n"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}\n"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson(sort_keys=true) }}{%- endfor %}\n"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' }}\n"
    "{%- elif messages[0].role == 'system' %}\n"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "{%- set content = message.content if message.content is string else '' %}\n"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}\n"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}\n"
    "{%- elif message.role == 'assistant' %}\n"
    "{{- '<|im_start|>assistant\\n' }}\n"
    "{%- if message.reasoning_content is string and message.reasoning_content %}\n"
    "{{- '<think>\\n' + message.reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    "{%- else %}{{- content }}{%- endif %}\n"
    "{%- if message.tool_calls %}\n"
    "{%- for tool_call in message.tool_calls %}\n"
    "{%- if (loop.first and content) or not loop.first %}{{- '\\n' }}{%- endif %}\n"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}\n"
    "{{- '<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}\n"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
    "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}\n"
    "{{- '}\\n</tool_call>' }}\n"
    "{%- endfor %}\n"
    "{%- endif %}\n"
    "{{- '<|im_end|>\\n' }}\n"
    "{%- elif message.role == 'tool' %}\n"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}\n"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}\n"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "{{- '<|im_start|>assistant\\n' }}\n"
    "{%- if open_thinking is defined and open_thinking is true %}{{- '<think>\\n' }}{%- endif %}\n"
    "{%- endif %}\n"
)

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """The template cannot be compiled or raised (`raise_exception`) while rendering."""


@lru_cache(maxsize=16)
def compile_template(template: str):
    """Compile in transformers' environment (see module doc); cached per template string."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat_template does not compile: {e} (line {e.lineno})") from e


def _alias_reasoning(message: Mapping[str, Any]) -> dict[str, Any]:
    msg = dict(message)
    reasoning = next((msg[k] for k in REASONING_FIELDS if msg.get(k) is not None), None)
    if reasoning is not None:
        msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
    return msg


def render(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
           tools: Sequence[Mapping[str, Any]] | None = None, special_tokens: Mapping[str, str] | None = None,
           **kwargs: Any) -> str:
    """The rendered chat string: `template` with messages, tools, add_generation_prompt, the special
    tokens (bos_token, eos_token, ...) and any extra template variables (e.g. open_thinking=True)."""
    import jinja2

    compiled = compile_template(template)
    try:
        return compiled.render(messages=[_alias_reasoning(m) for m in messages],
                               tools=list(tools) if tools is not None else None, documents=None,
                               add_generation_prompt=add_generation_prompt, **(special_tokens or {}), **kwargs)
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat_template raised: {e}") from e


def template_default_system(template: str) -> str | None:
    """The system message a template inserts when the chat has none (MiniMind v2's "You are a helpful
    assistant"), found by rendering a one-user chat; None when it inserts none."""
    marker = "\x00user\x00"
    text = render(template, [{"role": "user", "content": marker}])
    head = text.split(marker)[0]
    start = "<|im_start|>system\n"
    if start in head:
        return head.split(start, 1)[1].split("<|im_end|>", 1)[0]
    return None
