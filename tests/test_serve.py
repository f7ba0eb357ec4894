"""The OpenAI-compatible server on Ray Serve, through the official `openai` client on loopback.

One app for the whole module (Ray Serve start ~7 s; the `server` fixture in conftest.py): a random-init
`tiny` model (init std 0.2, so greedy choices are far from ties) and a BPE trained on the built-in math
text. Every greedy answer is compared with `minimind.generate.generate` run in this process on the
same checkpoint (serving_helpers.Reference).
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="pip install openai (the test extra) to test the server")
pytest.importorskip("ray.serve", reason="pip install 'ray[serve]' (the serve extra) to test the server")
requests = pytest.importorskip("requests")

from serving_helpers import CALC, MAX_TOKENS, Reference, make_checkpoint, user  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_chat_greedy_equals_native_generate_stream_and_not(server, client):
    served, ref, _ = server
    text, finish, n_tok, _ = ref.chat("what is 12 + 7?")
    for _ in range(2):  # same answer twice
        r = client.chat.completions.create(model="tiny", messages=user("what is 12 + 7?"), max_tokens=MAX_TOKENS,
                                           temperature=0)
        assert r.choices[0].message.content == text and r.choices[0].finish_reason == finish
        assert r.usage.prompt_tokens == len(ref.ids(user("what is 12 + 7?")))
        assert r.usage.completion_tokens == n_tok
        assert r.usage.total_tokens == r.usage.prompt_tokens + n_tok
    chunks = list(client.chat.completions.create(model="tiny", messages=user("what is 12 + 7?"), max_tokens=MAX_TOKENS,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [finish]
    assert chunks[-1].usage.completion_tokens == n_tok and len([c for c in chunks if c.choices]) > 2


def test_completions_endpoint_stream_and_not(server, client):
    _, ref, _ = server
    prompt = "12 + 30 ="
    text, finish, n_tok, lps = ref.answer(ref.tok.encode(prompt))
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, logprobs=2)
    assert r.choices[0].text == text and r.choices[0].finish_reason == finish
    assert r.usage.prompt_tokens == len(ref.tok.encode(prompt)) and r.usage.completion_tokens == n_tok
    assert r.choices[0].logprobs.token_logprobs == pytest.approx(lps, abs=1e-4)
    # greedy: the best alternative is the chosen token (the dict is keyed by text, so 1 or 2 entries)
    lp = r.choices[0].logprobs
    assert [max(t.values()) for t in lp.top_logprobs] == pytest.approx(lp.token_logprobs, abs=1e-6)
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True) if c.choices)
    assert streamed == text


def test_n_choices_seeded_and_usage(client):
    kw = dict(model="tiny", messages=user("tell me a number"), max_tokens=12, temperature=1.0, top_p=0.9, n=3,
              seed=11, logprobs=True)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices]          # seeded: reproducible
    assert len(set(texts)) > 1                                      # n samples, not n copies
    assert a.usage.completion_tokens == sum(len(c.logprobs.content) for c in a.choices)
    assert all(c.logprobs.content[0].logprob <= 0 for c in a.choices)


def test_stop_strings(server, client):
    _, ref, _ = server
    text, *_ = ref.chat("what is 3 * 4?")
    cut = next(i for i in range(3, len(text) - 2) if text[i:i + 2].strip() and text.find(text[i:i + 2]) == i)
    stop = text[cut:cut + 2]
    r = client.chat.completions.create(model="tiny", messages=user("what is 3 * 4?"), max_tokens=MAX_TOKENS,
                                       temperature=0, stop=[stop, "never-there"])
    assert r.choices[0].message.content == text[:cut] and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=user("what is 3 * 4?"), max_tokens=MAX_TOKENS, temperature=0, stop=stop, stream=True)
        if c.choices)
    assert streamed == text[:cut]


BAD_REQUESTS = [  # (body changes, expected status, expected param)
    ({"model": "gpt-9"}, 404, "model"),
    ({"max_tokens": -1}, 400, "max_tokens"),
    ({"max_tokens": 10 ** 9}, 400, "max_tokens"),
    ({"messages": user("1 2 3 4 5 6 7 8 " * 200)}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"n": 100}, 400, "n"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"messages": []}, 400, "messages"),
    ({"stop": 5}, 400, "stop"),
]


@pytest.mark.parametrize("change,status,param", BAD_REQUESTS, ids=[p for *_, p in BAD_REQUESTS])
def test_bad_request_gets_openai_error(server, change, status, param):
    body = {"model": "tiny", "messages": user("hi"), "max_tokens": 4, **change}
    r = requests.post(server[0].url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_malformed_json_and_bad_prompt_then_replica_still_serves(server, client):
    url = server[0].url
    before = requests.get(url + "/health").json()["replica"]
    r = requests.post(url + "/v1/chat/completions", data=b'{"messages": [', timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = requests.post(url + "/v1/completions", json={"model": "tiny", "prompt": [10 ** 6]}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:  # through the official client too
        client.chat.completions.create(model="tiny", messages=user("hi"), max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    assert requests.get(url + "/health").json()["replica"] == before   # same replica, not a restart
    assert client.chat.completions.create(model="tiny", messages=user("hi"), max_tokens=4).choices


def test_models_health_and_favicon(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    h = requests.get(server[0].url + "/health").json()
    assert h["status"] == "ok" and h["model"] == "tiny"
    r = requests.get(server[0].url + "/favicon.ico", timeout=30)
    assert r.status_code == 204 and not r.content


def test_load_64_chat_and_16_streaming_each_equals_alone(server):
    """80 concurrent requests against one replica: all answered, none mixed up, batched."""
    served, ref, _ = server
    questions = [f"what is {i} + {3 * i}?" for i in range(80)]
    lengths = [8 + i % 17 for i in range(80)]
    expected = [ref.chat(q, n)[0] for q, n in zip(questions, lengths)]
    before = requests.get(served.url + "/health").json()["decode_batch_sizes"]
    aclient = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    async def one(i: int) -> str:
        kw = dict(model="tiny", messages=user(questions[i]), max_tokens=lengths[i], temperature=0)
        if i < 64:
            return (await aclient.chat.completions.create(**kw)).choices[0].message.content
        parts = []
        async for c in await aclient.chat.completions.create(**kw, stream=True):
            if c.choices and c.choices[0].delta.content:
                parts.append(c.choices[0].delta.content)
        return "".join(parts)

    async def all_of_them():
        try:
            return await asyncio.gather(*(one(i) for i in range(80)))
        finally:
            await aclient.close()

    answers = asyncio.run(all_of_them())
    assert answers == expected
    after = requests.get(served.url + "/health").json()["decode_batch_sizes"]
    seen = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    print("decode batch sizes seen (rows per step: steps):", json.dumps(seen))
    assert max(seen) >= 32, f"requests were not batched together: {seen}"


@pytest.mark.slow
def test_live_weights_push_changes_answers_and_survives_replica_restart(server, client, tmp_path):
    import ray

    served, ref, ckpt = server
    other = Reference(make_checkpoint(tmp_path / "other", seed=1))
    q = "what is 5 + 5?"
    mine, theirs = ref.chat(q)[0], other.chat(q)[0]
    assert mine != theirs
    served.load_weights(ray.put(other.model.state_dict()), version=1)
    r = client.chat.completions.create(model="tiny", messages=user(q), max_tokens=MAX_TOKENS, temperature=0)
    assert r.choices[0].message.content == theirs and r.system_fingerprint.endswith("-v1")
    bad = {k: v[:1] for k, v in other.model.state_dict().items()}
    with pytest.raises(ValueError, match="version 2 not loaded"):
        served.load_weights(bad, version=2)
    assert client.chat.completions.create(model="tiny", messages=user(q), max_tokens=MAX_TOKENS,
                                          temperature=0).choices[0].message.content == theirs
    served.load_weights(ref.model.state_dict(), version=3)   # back to the checkpoint's weights
    assert client.chat.completions.create(model="tiny", messages=user(q), max_tokens=MAX_TOKENS,
                                          temperature=0).choices[0].message.content == mine

    # a replica that dies is replaced, and the new one loads the latest published weights
    h = requests.get(served.url + "/health").json()
    ray.kill(ray.get_actor(h["actor"], namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            h2 = requests.get(served.url + "/health", timeout=5).json()
            if h2.get("replica", h["replica"]) != h["replica"] and h2["weights_version"] == 3:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "no replacement replica answered within 90 s"
        time.sleep(0.2)
    assert client.chat.completions.create(model="tiny", messages=user(q), max_tokens=MAX_TOKENS,
                                          temperature=0).choices[0].message.content == mine


def test_chat_cli_against_the_server(server):
    served, ref, _ = server
    hello = ref.chat("hello", 16)[0]
    script = "hello\n/reset\nhello\n/system be brief\nhi\n/exit\n"
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / "chat.py"), "--url", served.url,
                        "--max-tokens", "16", "--temperature", "0"],
                       input=script, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count(hello) == 2, p.stdout


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--no-first-run", "--metrics-recording-only",
                 "--disable-domain-reliability", "--disable-breakpad"]


def test_chat_page_in_headless_chromium(server, client, tmp_path):
    """Type a question on the page at /, wait for the streamed reply, compare with the API's greedy answer."""
    if not CHROMIUM.exists():
        pytest.skip(f"BROWSER TEST NOT RUN: {CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("BROWSER TEST NOT RUN: playwright is not installed (pip install playwright; no browser download)")
    served = server[0]
    question = "what is 7 + 8?"
    expected = client.chat.completions.create(model="tiny", messages=user(question), max_tokens=20,
                                              temperature=0).choices[0].message.content
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 560})
            failed: list[str] = []   # loads the console would show as failed (headless Chromium asks for no favicon)
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(served.url + "/")
            page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "20")
            page.fill("#prompt", question)
            page.press("#prompt", "Enter")
            page.wait_for_selector(".assistant[data-done='1']", timeout=30_000)
            answer = page.eval_on_selector(".assistant .answer", "e => e.textContent")
            meta = page.inner_text(".assistant .meta")
            page.screenshot(path=str(tmp_path / "chat_page.png"))
            page.click("#clear")
            assert page.locator(".msg").count() == 0
        finally:
            browser.close()
    assert answer == expected and not failed, failed
    assert "completion tokens" in meta
    assert (tmp_path / "chat_page.png").stat().st_size > 5000
    print("screenshot:", tmp_path / "chat_page.png")


# ----------------------------------------------------------------------------- tools
def test_chat_with_tools_renders_them_through_the_template(server, client):
    """tools, an assistant tool call (arguments as a JSON string) and a tool result reach the prompt as
    the tokenizer's template renders them; the answer is the native greedy one on that prompt."""
    _, ref, _ = server
    history = [{"role": "user", "content": "what is 123 * 45?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "123 * 45"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "5535"}]
    rendered = [history[0], {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "123 * 45"}}}]}, history[2]]
    ids = ref.tok.encode(ref.tok.apply_chat_template(rendered, add_generation_prompt=True, tools=[CALC]))
    prompt = ref.tok.decode(ids, skip_special_tokens=False)
    assert '"expression": "123 * 45"' in prompt and "<tool_response>\n5535\n</tool_response>" in prompt
    text, finish, n_tok, _ = ref.answer(ids)
    r = client.chat.completions.create(model="tiny", messages=history, tools=[CALC], max_tokens=MAX_TOKENS,
                                       temperature=0)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == n_tok
    assert r.choices[0].message.content == text and not r.choices[0].message.tool_calls
    none = client.chat.completions.create(model="tiny", messages=history[:1], tools=[CALC], tool_choice="none",
                                          max_tokens=4, temperature=0)
    assert none.usage.prompt_tokens == len(ref.ids(history[:1]))           # tool_choice none: no tools block


@pytest.mark.parametrize("change, param", [
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0]"),
    ({"tools": "calculator"}, "tools"),
    ({"tools": [CALC], "tool_choice": "required"}, "tool_choice"),
    ({"tools": [CALC], "stream": True}, "stream"),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
])
def test_bad_tool_requests_get_openai_errors(server, change, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **change}
    r = requests.post(server[0].url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_generated_tool_calls_become_openai_tool_calls():
    """What the model writes in the template's format comes back as message.tool_calls, in a response
    the official client parses."""
    from openai.types.chat import ChatCompletion

    from serving.tools import tool_message

    text = ('Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "123 * 45"}}\n'
            '</tool_call>\n<tool_call>{"name": oops}</tool_call>')
    message, finish = tool_message(text, "stop")
    assert finish == "tool_calls"
    assert message["content"] == 'Let me compute.\n\n<tool_call>{"name": oops}</tool_call>'   # malformed stays text
    r = ChatCompletion.model_validate({"id": "x", "object": "chat.completion", "created": 0, "model": "tiny",
                                       "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "calculator" and json.loads(call.function.arguments) == {"expression": "123 * 45"}
    assert call.id.startswith("call_") and call.type == "function"
    only = tool_message('<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>', "stop")
    assert only[0]["content"] is None and only[1] == "tool_calls"
    assert tool_message("#### 5535", "stop") == ({"role": "assistant", "content": "#### 5535"}, "stop")
    assert tool_message('<tool_call>{"name": "calculator", "arguments": {}}</tool_call>', "length")[1] == "length"
