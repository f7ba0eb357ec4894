"""Tool use through two real clients: the `openai` client's tool loop vs langchain-openai's `bind_tools`.

    python -m bench.tool_clients --model runs/grpo_tools/final --n 100
    python -m bench.tool_clients --model runs/grpo_tools/final --url http://127.0.0.1:8000   # a running server

Serves `--model` (a tool model, e.g. the `final` folder of `experiments/grpo_tools.py`) with
`experiments/serve.py` on 127.0.0.1 (or uses `--url`), then solves the same `--n` fresh HARD tool
problems (minimind.data.tool_math, TEST split, `--seed`, none of them in the recipe's held-out set)
twice, greedily (temperature 0), with the recipe's episode bounds (`--max-turns` assistant turns,
`--max-tokens` per turn):

- `openai`: the official client's loop, `tools=[<the project's calculator schema>]` (its parameters
  keyed `type, properties, required`), the calls run by the project's `ToolRegistry`, results sent back
  as `tool` messages;
- `langchain`: `ChatOpenAI(...).bind_tools([calculator])`, where `calculator` is a langchain tool with
  the project tool's name and description and an `expression: str` argument (langchain writes its
  schema `properties, required, type`; the script checks it equals the project's schema as a dict),
  whose body runs the same registry; `tool.invoke(tool_call)` builds the `ToolMessage` sent back.

Every problem's final assistant text is scored with the project's verifier (`reward.verifier.math_reward`,
`####` answers, as the recipe's reward). Prompts: both clients' request bodies are captured on the
wire (httpx event hooks) and rendered with the server's own code (`serving.protocol.parse_chat` with the
served tokenizer): the token ids of each request are compared between the clients, request by request,
and with the server's `usage.prompt_tokens`. Prints one JSON object: per client accuracy, tool calls,
turns, errors and seconds; the prompt comparison; one langchain transcript.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

import httpx

from bench.common import emit, environment, log
from bench.serve import free_port, loadavg
from minimind.checkpoint import check_checkpoint
from minimind.data import tool_math as tm
from recipes.tools_rl import ToolsGRPOConfig
from reward.verifier import math_reward
from rollout.env.tools import ToolRegistry, ToolResult, calculator_tool
from serving.config import ServeConfig
from serving.protocol import Limits, parse_chat
from serving.server import served_tokenizer

REPO = Path(__file__).resolve().parent.parent


def fail(msg: str) -> NoReturn:
    print(f"bench.tool_clients: {msg}", file=sys.stderr)
    sys.exit(2)


@dataclass
class Episode:
    """One problem through one client."""

    correct: bool = False
    final: str | None = None
    """The last assistant text without a tool call (None: the turns ran out on a call, or an error)."""
    tool_calls: int = 0
    tool_errors: int = 0
    """Calls whose result was an error (bad arguments, the calculator refusing, an unknown tool)."""
    turns: int = 0
    client_error: str | None = None
    """An exception raised by the client (HTTP error, bad response)."""
    server_prompt_tokens: list[int] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    """Every request body the client sent, as it went on the wire."""
    transcript: list[dict] = field(default_factory=list)


class WireLog:
    """httpx request hook that keeps each request's JSON body in the calling thread's current episode
    (sync clients run their hooks in the calling thread)."""

    def __init__(self) -> None:
        self.local = threading.local()

    def client(self) -> httpx.Client:
        return httpx.Client(event_hooks={"request": [self.hook]}, timeout=httpx.Timeout(3600.0))

    def hook(self, request: httpx.Request) -> None:
        episode = getattr(self.local, "episode", None)
        if episode is not None and request.method == "POST":
            episode.bodies.append(json.loads(request.content))

    def record(self, episode: Episode) -> None:
        self.local.episode = episode


def run_call(registry: ToolRegistry, name: str, arguments: str, timeout_s: float) -> ToolResult:
    """The project's tool call on an OpenAI `arguments` string (a JSON object)."""
    try:
        args = json.loads(arguments)
    except json.JSONDecodeError as e:
        return ToolResult(f"error: arguments are not JSON ({e})", False)
    return registry.call(name, args, timeout_s=timeout_s)


def openai_episode(client: Any, model: str, question: str, registry: ToolRegistry, turns: int,
                   max_tokens: int, timeout_s: float, ep: Episode) -> None:
    messages: list[dict] = [{"role": "user", "content": question}]
    for _ in range(turns):
        r = client.chat.completions.create(model=model, messages=messages, tools=registry.schemas(),
                                           temperature=0, max_tokens=max_tokens)
        ep.turns += 1
        ep.server_prompt_tokens.append(r.usage.prompt_tokens)
        msg = r.choices[0].message
        if not msg.tool_calls:
            ep.final = msg.content or ""
            return
        messages.append(msg.model_dump(exclude_none=True))
        for call in msg.tool_calls:
            res = run_call(registry, call.function.name, call.function.arguments, timeout_s)
            ep.tool_calls += 1
            ep.tool_errors += not res.ok
            messages.append({"role": "tool", "tool_call_id": call.id, "content": res.text})


def langchain_tools(registry: ToolRegistry, timeout_s: float) -> dict[str, Any]:
    """The project's calculator as a langchain tool, schema inferred by langchain from the signature."""
    from langchain_core.tools import StructuredTool, ToolException

    project = registry.tools["calculator"]

    def calculator(expression: str) -> str:
        res = registry.call(project.name, {"expression": expression}, timeout_s=timeout_s)
        if not res.ok:
            raise ToolException(res.text)     # langchain sends it back with status "error"
        return res.text

    tool = StructuredTool.from_function(calculator, name=project.name, description=project.description,
                                        handle_tool_error=str, handle_validation_error=True)
    return {tool.name: tool}


def langchain_episode(llm: Any, tools: dict[str, Any], question: str, turns: int, ep: Episode) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage

    history: list[Any] = [HumanMessage(question)]
    for _ in range(turns):
        ai = llm.invoke(history)
        ep.turns += 1
        ep.server_prompt_tokens.append(ai.response_metadata["token_usage"]["prompt_tokens"])
        history.append(ai)
        ep.tool_errors += len(ai.invalid_tool_calls)      # the server returns only well-formed calls
        if not ai.tool_calls:
            ep.final = ai.content
            break
        for call in ai.tool_calls:
            tool = tools.get(call["name"])
            result = tool.invoke(call) if tool else ToolMessage(f"error: unknown tool {call['name']!r}",
                                                                tool_call_id=call["id"], status="error")
            ep.tool_calls += 1
            ep.tool_errors += result.status == "error"
            history.append(result)
    ep.transcript = [m.model_dump(include={"type", "content", "tool_calls", "tool_call_id", "status"})
                     for m in history]


def solve_all(name: str, problems: list, wire: WireLog, episode_fn: Callable[[str, Episode], None],
              concurrency: int) -> tuple[list[Episode], float]:
    def one(p) -> Episode:
        ep = Episode()
        wire.record(ep)
        try:
            episode_fn(p.question, ep)
        except Exception as e:  # noqa: BLE001 - counted and reported per client, the run goes on
            ep.client_error = f"{type(e).__name__}: {e}"
        ep.correct = ep.final is not None and math_reward(ep.final, p.answer, "hash") == 1.0
        return ep

    log(f"{name}: {len(problems)} problems")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        episodes = list(pool.map(one, problems))
    return episodes, time.perf_counter() - t0


def summary(problems: list, episodes: list[Episode], seconds: float) -> dict[str, Any]:
    n = len(episodes)
    errors = [e.client_error for e in episodes if e.client_error]
    kinds = {"products": [e.correct for p, e in zip(problems, episodes) if "*" in p.solution],
             "sums": [e.correct for p, e in zip(problems, episodes) if "+" in p.solution]}
    return {"accuracy": round(sum(e.correct for e in episodes) / n, 4), "correct": sum(e.correct for e in episodes),
            "by_kind": {k: f"{sum(v)}/{len(v)}" for k, v in kinds.items()},
            "tool_calls_per_problem": round(sum(e.tool_calls for e in episodes) / n, 3),
            "problems_with_a_call": sum(e.tool_calls > 0 for e in episodes),
            "tool_errors": sum(e.tool_errors for e in episodes),
            "turns_per_problem": round(sum(e.turns for e in episodes) / n, 3),
            "no_final_answer": sum(e.final is None and not e.client_error for e in episodes),
            "client_errors": len(errors), "first_client_error": errors[0] if errors else None,
            "seconds": round(seconds, 1)}


def fresh_problems(n: int, seed: int) -> tuple[list, int]:
    """`n` HARD test problems of `seed`, none in the recipe's held-out set (recipes/tools_rl.py evaluates
    on seed+1 of its own seed); returns them and how many were skipped for being there."""
    cfg = ToolsGRPOConfig()
    held_out = {p.question for p in tm.tool_problems(cfg.eval_size, cfg.seed + 1, "test", "hard")}
    pool = tm.tool_problems(n + cfg.eval_size, seed, "test", "hard")
    fresh = [p for p in pool if p.question not in held_out]
    if len(fresh) < n:
        fail(f"--n {n}: only {len(fresh)} fresh hard test problems for --seed {seed}")
    return fresh[:n], len(pool) - len(fresh)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def served(model: Path, log_path: Path) -> Iterator[str]:
    """experiments/serve.py on `model` (127.0.0.1, a free port) in its own process group; yields the URL."""
    port = free_port()
    cmd = [sys.executable, str(REPO / "experiments" / "serve.py"), "--model", str(model), "--port", str(port),
           "--name", "tools"]
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not answers(url + "/v1/models"):
            if proc.poll() is not None:
                tail = log_path.read_text().strip().splitlines()[-1:]
                fail(f"experiments/serve.py exited with {proc.returncode} (log {log_path}): {tail[0] if tail else ''}")
            time.sleep(2)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)        # its Ctrl-C path: the app and its Ray end with it
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def prompt_ids(model: Path, episodes: list[Episode]) -> list[list[list[int]]]:
    """Each episode's requests rendered as the server renders them (its tokenizer, its parse_chat)."""
    cfg = ServeConfig(model=str(model), name="tools")
    mcfg = check_checkpoint(model)
    tok = served_tokenizer(cfg, model, mcfg)
    limits = Limits(context=mcfg.max_position_embeddings, max_n=cfg.max_n,
                    default_max_tokens=cfg.default_max_tokens, model_names=("tools",))
    return [[parse_chat(b, limits, tok).prompt_ids for b in e.bodies] for e in episodes]


def compare_prompts(model: Path, oa: list[Episode], lc: list[Episode]) -> dict[str, Any]:
    ids_oa, ids_lc = prompt_ids(model, oa), prompt_ids(model, lc)
    pairs = [(a, b) for xs, ys in zip(ids_oa, ids_lc) for a, b in zip(xs, ys)]
    served_counts = [(len(i), s) for eps, ids in ((oa, ids_oa), (lc, ids_lc)) for e, xs in zip(eps, ids)
                     for i, s in zip(xs, e.server_prompt_tokens)]
    return {"requests_compared": len(pairs),
            "identical_token_ids": sum(a == b for a, b in pairs),
            "first_requests_identical": f"{sum(x[0] == y[0] for x, y in zip(ids_oa, ids_lc) if x and y)}/{len(oa)}",
            "problems_with_identical_prompts_every_turn": sum(x == y for x, y in zip(ids_oa, ids_lc)),
            "rendered_here_equals_server_prompt_tokens": f"{sum(a == b for a, b in served_counts)}/{len(served_counts)}",
            "same_final_text": sum(a.final == b.final for a, b in zip(oa, lc)),
            "parameters_key_order": {name: list(eps[0].bodies[0]["tools"][0]["function"]["parameters"])
                                     for name, eps in (("openai", oa), ("langchain", lc)) if eps[0].bodies}}


def transcript(episodes: list[Episode]) -> dict[str, Any] | None:
    """The first solved langchain episode that called the tool (else the first that called it): its
    messages, and its last request as sent."""
    called = [e for e in episodes if e.tool_calls and e.final is not None]
    ep = next((e for e in called if e.correct), called[0] if called else None)
    return None if ep is None else {"messages": ep.transcript, "last_request_messages": ep.bodies[-1]["messages"],
                                    "tools_as_sent": ep.bodies[0]["tools"], "correct": ep.correct}


def main() -> None:
    defaults = ToolsGRPOConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Prints one JSON object on stdout.")
    p.add_argument("--model", required=True, help="checkpoint folder of a tool model (grpo_tools.py's <run-dir>/final)")
    p.add_argument("--url", default=None, help="a server already serving --model (default: start experiments/serve.py)")
    p.add_argument("--n", type=int, default=60, help="hard test problems")
    p.add_argument("--seed", type=int, default=1234, help="problem seed (the recipe's held-out set is excluded)")
    p.add_argument("--max-turns", type=int, default=defaults.env.max_turns)
    p.add_argument("--max-tokens", type=int, default=defaults.rollout.sampling.max_new_tokens)
    p.add_argument("--concurrency", type=int, default=4, help="problems in flight per client (greedy answers "
                                                              "do not depend on the batch)")
    args = p.parse_args()
    model = Path(args.model)
    if not (model / "tokenizer.json").is_file():
        fail(f"--model {model}: not a checkpoint folder with a tokenizer.json")
    if args.n < 1 or args.max_turns < 1 or args.max_tokens < 1 or args.concurrency < 1:
        fail("--n, --max-turns, --max-tokens and --concurrency must be >= 1")
    try:
        import openai
        from langchain_core.utils.function_calling import convert_to_openai_tool
        from langchain_openai import ChatOpenAI
    except ImportError as e:
        fail(f"{e.name} is not installed: pip install openai langchain-openai")

    registry = ToolRegistry().add(calculator_tool())
    timeout_s = defaults.env.tool_timeout_s
    lc_tools = langchain_tools(registry, timeout_s)
    if [convert_to_openai_tool(t) for t in lc_tools.values()] != registry.schemas():
        fail("langchain's calculator schema differs from the project's: the comparison would not be fair")
    problems, skipped = fresh_problems(args.n, args.seed)
    wire = WireLog()
    result: dict[str, Any] = {
        "bench": "tool_clients", "model": str(model), "n": args.n, "problems": "tool_math hard, test split",
        "seed": args.seed, "skipped_in_recipe_held_out": skipped, "max_turns": args.max_turns,
        "max_tokens": args.max_tokens, "temperature": 0, "concurrency": args.concurrency,
        "versions": {pkg: metadata.version(pkg) for pkg in ("openai", "langchain-openai", "langchain-core")},
        "env": environment(), "loadavg_before": {}}

    with (served(model, Path(os.environ.get("TMPDIR", "/tmp")) / f"tool_clients-serve-{os.getpid()}.log")
          if args.url is None else given_server(args.url)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, http_client=wire.client())
        llm = ChatOpenAI(base_url=url + "/v1", api_key="unused", model="tools", temperature=0,
                         max_tokens=args.max_tokens, max_retries=0, http_client=wire.client()
                         ).bind_tools(list(lc_tools.values()))
        runs: dict[str, Callable[[str, Episode], None]] = {
            "openai": lambda q, ep: openai_episode(client, "tools", q, registry, args.max_turns, args.max_tokens,
                                                   timeout_s, ep),
            "langchain": lambda q, ep: langchain_episode(llm, lc_tools, q, args.max_turns, ep)}
        episodes = {}
        for name, fn in runs.items():
            result["loadavg_before"][name] = loadavg()
            episodes[name], secs = solve_all(name, problems, wire, fn, args.concurrency)
            result[name] = summary(problems, episodes[name], secs)
            log(f"  {name}: {result[name]}")
    result["loadavg_after"] = loadavg()
    diff = result["langchain"]["accuracy"] - result["openai"]["accuracy"]
    result["langchain_minus_openai_points"] = round(100 * diff, 1)
    result["within_3_points"] = abs(diff) <= 0.03
    result["prompts"] = compare_prompts(model, episodes["openai"], episodes["langchain"])
    result["langchain_transcript"] = transcript(episodes["langchain"])
    emit(result, append=False)


@contextmanager
def given_server(url: str) -> Iterator[str]:
    yield url.rstrip("/")


if __name__ == "__main__":
    main()
