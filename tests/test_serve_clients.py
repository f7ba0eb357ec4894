"""The server driven by clients people point at OpenAI-compatible servers: the `openai` client's
completions with `echo` (prompt scoring), request fields the server does not take (a 400 naming the
field, through `extra_body`), lm-evaluation-harness (`lm-eval`) itself, in a subprocess, scoring a
four-way multiple-choice task through `local-completions` and generating through
`local-chat-completions`, and the tool loops of langchain-openai and of the `openai` client. Every
number is compared with the project's own model on the same checkpoint.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

openai = pytest.importorskip("openai", reason="pip install openai (the test extra) to test the server")
pytest.importorskip("ray.serve", reason="pip install 'ray[serve]' (the serve extra) to test the server")

from minimind.data import synthetic_math as sm  # noqa: E402
from serving_helpers import CALC, TOOL_CHAT, Reference, user  # noqa: E402


def model_logprobs(ref: Reference, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1 from one plain forward of the project's model."""
    with torch.no_grad():
        logp = F.log_softmax(ref.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return logp[:-1].gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1).tolist()


def test_echo_scores_the_prompt_like_a_forward_pass(server, client):
    _, ref, _ = server
    prompt = "What is 12 + 7?\n12 + 7 = 19\n#### 19"
    ids = ref.tok.encode(prompt)
    expected = model_logprobs(ref, ids)
    r = client.completions.create(model="tiny", prompt=prompt, echo=True, max_tokens=0, logprobs=3)
    (c,) = r.choices
    assert c.text == prompt and c.finish_reason == "length"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0
    lp = c.logprobs
    assert lp.tokens == [ref.tok.decode([t], skip_special_tokens=False) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None          # nothing precedes token 0
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    for tok_lp, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert 1 <= len(top) <= 3 and max(top.values()) >= tok_lp - 1e-6         # the top-3 of the same distribution
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)

    # echo + generation: the prompt (scored) then the greedy completion, as one choice
    text, finish, n_tok, gen_lps = ref.answer(ids, 6)
    r = client.completions.create(model="tiny", prompt=prompt, echo=True, max_tokens=6, logprobs=1, temperature=0)
    c = r.choices[0]
    assert c.text == prompt + text and r.usage.completion_tokens == n_tok
    assert c.logprobs.token_logprobs[1:] == pytest.approx(expected + gen_lps, abs=1e-4)
    assert c.logprobs.text_offset[len(ids)] == len(prompt)

    # several prompts in one request (lm-eval's batches): choice i answers prompt i, each as if alone
    other = ref.tok.encode("What is 3 * 4?\n3 * 4 = 12")
    r = client.completions.create(model="tiny", prompt=[ids, other], echo=True, max_tokens=0, logprobs=0)
    assert [c.index for c in r.choices] == [0, 1] and r.usage.prompt_tokens == len(ids) + len(other)
    assert r.choices[0].logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert r.choices[1].logprobs.token_logprobs[1:] == pytest.approx(model_logprobs(ref, other), abs=1e-4)
    # streamed: the prompt leads the first chunk
    chunks = [ch.choices[0] for ch in client.completions.create(model="tiny", prompt=prompt, echo=True, max_tokens=4,
                                                                temperature=0, stream=True) if ch.choices]
    assert chunks[0].text.startswith(prompt) and "".join(ch.text for ch in chunks) == prompt + ref.answer(ids, 4)[0]


@pytest.mark.parametrize("endpoint, field, value", [
    ("chat", "top_k", 5),                       # a vLLM extension this server does not have
    ("chat", "frequency_penalty", 0.5),
    ("chat", "logit_bias", {"12": 5}),
    ("chat", "response_format", {"type": "json_object"}),
    ("chat", "parallel_tool_calls", False),
    ("completions", "best_of", 3),
    ("completions", "suffix", "!"),
    ("completions", "prompt_logprobs", 2),
])
def test_fields_the_server_does_not_take_are_400_naming_them(client, endpoint, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        if endpoint == "chat":
            client.chat.completions.create(model="tiny", messages=user("hi"), max_tokens=2, extra_body={field: value})
        else:
            client.completions.create(model="tiny", prompt="hi", max_tokens=2, extra_body={field: value})
    assert e.value.body["param"] == field and field in e.value.body["message"], e.value.body


def test_documented_no_ops_are_accepted(server, client):
    _, ref, _ = server
    text = ref.chat("what is 2 + 2?", 6)[0]
    r = client.chat.completions.create(model="tiny", messages=user("what is 2 + 2?"), max_tokens=6, temperature=0,
                                       user="someone", frequency_penalty=0, presence_penalty=0.0, logit_bias={},
                                       response_format={"type": "text"}, store=False, metadata={"k": "v"},
                                       parallel_tool_calls=True, extra_body={"service_tier": "auto", "top_k": None})
    assert r.choices[0].message.content == text
    r = client.completions.create(model="tiny", prompt="hi", max_tokens=2, best_of=1, suffix="", user="someone")
    assert r.choices[0].finish_reason
    with pytest.raises(openai.BadRequestError) as e:   # max_tokens 0 only with echo: without it there is nothing to return
        client.completions.create(model="tiny", prompt="hi", max_tokens=0)
    assert e.value.body["param"] == "max_tokens"


# ----------------------------------------------------------------------------- lm-evaluation-harness
MC_TASK = """task: minimind_arith_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
"""
GEN_TASK = """task: minimind_arith_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["never-in-the-text"]
  max_gen_toks: {max_tokens}
  do_sample: false
metric_list:
  - metric: exact_match
"""


def arithmetic_choice_docs(tok, n: int) -> list[dict]:
    """Held-out problems, each with its worked answer and three wrong ones (one wrong step or total).
    The context is the chat prompt without its last newline, which starts every choice: lm-eval moves
    a context's trailing whitespace into the continuation, so the split is where the model's turn starts."""
    import random

    rng = random.Random(0)
    docs = []
    for p in sm.generate_problems(n, seed=5, split="test"):
        wrong: list[str] = []
        while len(wrong) < 3:
            w = sm.wrong_solution(p, rng)
            if w != p.solution and w not in wrong:
                wrong.append(w)
        label = rng.randrange(4)
        choices = wrong[:label] + [p.solution] + wrong[label:]
        prompt = tok.apply_chat_template(user(p.question), add_generation_prompt=True)
        docs.append({"context": prompt[:-1], "choices": ["\n" + c for c in choices], "label": label,
                     "question": p.question, "answer": p.answer})
    return docs


def run_lm_eval(tmp: Path, model: str, model_args: str, task: str, *extra: str) -> dict:
    """lm-eval's CLI in a subprocess (offline), with --log_samples; returns {doc_id: sample}."""
    out = tmp / f"out-{model}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "OPENAI_API_KEY": "unused"}
    p = subprocess.run([sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args,
                        "--tasks", task, "--include_path", str(tmp), "--output_path", str(out), "--log_samples", *extra],
                       capture_output=True, text=True, env=env, cwd=tmp)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    (samples,) = out.rglob(f"samples_{task}_*.jsonl")
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    print(p.stdout[-1500:])
    return {r["doc_id"]: r for r in rows}


@pytest.mark.slow
def test_lm_eval_scores_choices_and_generates_through_the_server(server, tmp_path):
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        msg = "LM-EVAL TEST NOT RUN: pip install 'lm-eval[api]' (part of the test extra)"
        print(f"\n*** {msg} ***\n", file=sys.stderr)
        pytest.skip(msg)
    served, ref, ckpt = server
    docs = arithmetic_choice_docs(ref.tok, 12)
    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "mc.yaml").write_text(MC_TASK.format(data=data))
    (tmp_path / "gen.yaml").write_text(GEN_TASK.format(data=data, max_tokens=16))

    # log-likelihood: echo + logprobs + max_tokens 1, token-id prompts in batches of 8
    samples = run_lm_eval(tmp_path, "local-completions",
                          f"model=tiny,base_url={served.url}/v1/completions,tokenizer={ckpt},"
                          "tokenizer_backend=huggingface", "minimind_arith_mc", "--batch_size", "8")
    assert sorted(samples) == list(range(len(docs)))
    for i, doc in enumerate(docs):
        ctx = ref.tok.encode(doc["context"])
        scores = []
        for choice in doc["choices"]:
            whole = ref.tok.encode(doc["context"] + choice)
            assert whole[:len(ctx)] == ctx
            scores.append(sum(model_logprobs(ref, whole)[len(ctx) - 1:]))
        got = [float(r[0]) for r in samples[i]["filtered_resps"]]   # the log holds them as strings
        assert got == pytest.approx(scores, abs=1e-4), (i, got, scores)
        assert samples[i]["acc"] == float(max(range(4), key=scores.__getitem__) == doc["label"])

    # generation through chat completions: lm-eval's recorded answers are the greedy ones
    samples = run_lm_eval(tmp_path, "local-chat-completions",
                          f"model=tiny,base_url={served.url}/v1/chat/completions", "minimind_arith_gen",
                          "--apply_chat_template", "--limit", "6")
    assert len(samples) == 6
    for i, s in samples.items():
        assert s["resps"][0][0] == ref.chat(docs[i]["question"], 16)[0], (i, s["resps"])


# ----------------------------------------------------------------------------- agent clients
@pytest.fixture
def tool_model(server):
    """The served weights replaced (live, through `Served.load_weights`) by the tiny model fine-tuned
    until it repeats TOOL_CHAT: the calculator call, then the answer after the result; put back after."""
    served, _, ckpt = server
    ref = Reference(ckpt)                       # its own copy: the module's reference model stays as served
    ids, mask = ref.tok.encode_chat_masked(TOOL_CHAT, tools=[CALC])
    x = torch.tensor([ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(ids, mask)]])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(ref.model.parameters(), lr=1e-2)
    ref.model.train()
    for _ in range(200):
        loss = ref.model(x, labels=labels).loss
        if loss.item() < 0.01:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01, f"the tiny model did not learn the tool chat (loss {loss.item():.3f})"
    ref.model.eval()
    served.load_weights(ref.model.state_dict(), version=1)
    yield ref
    served.load_weights(Reference(ckpt).model.state_dict(), version=2)


def test_langchain_and_openai_tool_loops_call_the_calculator_and_get_the_answer(server, client, tool_model):
    try:
        from langchain_core.messages import HumanMessage
        from langchain_core.tools import tool
        from langchain_core.utils.function_calling import convert_to_openai_tool
        from langchain_openai import ChatOpenAI
    except ImportError:
        msg = "LANGCHAIN TEST NOT RUN: pip install langchain-openai (part of the test extra)"
        print(f"\n*** {msg} ***\n", file=sys.stderr)
        pytest.skip(msg)
    from rollout.env.tools import calculator_tool

    project_calculator = calculator_tool()
    question = TOOL_CHAT[0]["content"]

    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression exactly: + - * / ** and parentheses."""
        return str(project_calculator.fn(expression=expression))

    schema = convert_to_openai_tool(calculator)
    assert schema == CALC                                               # the same tool ...
    assert list(schema["function"]["parameters"]) != list(CALC["function"]["parameters"])   # ... keys in another order

    llm = ChatOpenAI(base_url=server[0].url + "/v1", api_key="unused", model="tiny", temperature=0, max_tokens=64,
                     max_retries=0).bind_tools([calculator])
    history = [HumanMessage(question)]
    ai = llm.invoke(history)
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [("calculator", {"expression": "123 * 45"})], ai
    result = calculator.invoke(ai.tool_calls[0])                         # a ToolMessage with the call's id
    final = llm.invoke([*history, ai, result])
    transcript = [m.model_dump(include={"type", "content", "tool_calls", "tool_call_id"}) for m in
                  (*history, ai, result, final)]
    print("langchain transcript:", *map(json.dumps, transcript), sep="\n  ")
    assert result.content == "5535" and final.content == "#### 5535" and not final.tool_calls

    # the openai client's loop, schema keys in the openai order: the same prompt, call and answer
    messages = user(question)
    r = client.chat.completions.create(model="tiny", messages=messages, tools=[CALC], max_tokens=64, temperature=0,
                                       logprobs=True)
    assert r.usage.prompt_tokens == ai.response_metadata["token_usage"]["prompt_tokens"]
    as_langchain = client.chat.completions.create(model="tiny", messages=messages, tools=[schema], max_tokens=64,
                                                  temperature=0, logprobs=True)
    assert as_langchain.choices[0].logprobs == r.choices[0].logprobs   # same prompt, to the last bit
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "calculator"
    answer = str(project_calculator.fn(**json.loads(call.function.arguments)))
    messages += [r.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": answer}]
    r = client.chat.completions.create(model="tiny", messages=messages, tools=[CALC], max_tokens=64, temperature=0)
    assert r.choices[0].message.content == "#### 5535"
    assert r.usage.prompt_tokens == final.response_metadata["token_usage"]["prompt_tokens"]
