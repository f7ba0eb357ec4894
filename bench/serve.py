"""Serving throughput: the Ray Serve app (continuous batching) vs a one-request-at-a-time server.

    python -m bench.serve                         # minimind2-small, random init, concurrency 1, 8, 64
    python -m bench.serve --preset demo --max-tokens 32 --requests-per-client 2

Both servers answer the same OpenAI chat requests with the same random-init model, greedily, so
they produce the same tokens. The baseline is the MiniMind way: a single-threaded HTTP server that
runs one `minimind.generate` call per request. Clients are threads posting JSON over loopback.
Prints one JSON object: requests/s, completion tokens/s, p50/p95 latency per concurrency, and the
ratio of tokens/s (ours / baseline) at each concurrency. Keep the machine otherwise idle.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import requests
import torch

from minimind.checkpoint import load_model, save_model
from minimind.config import preset
from minimind.data import synthetic_math as sm
from minimind.generate import SamplingParams, generate
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import MiniMindTokenizer, train_tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_at_a_time_server(ckpt: Path, port: int) -> HTTPServer:
    """/v1/chat/completions, one request at a time, one generate call each (no batching)."""
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
            resp = json.dumps({"choices": [{"message": {"role": "assistant", "content": tok.decode(
                out.response_ids[0][:n].tolist())}}], "usage": {"completion_tokens": n}}).encode()
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


def load(url: str, concurrency: int, n_requests: int, max_tokens: int) -> dict:
    def one(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = requests.post(url + "/v1/chat/completions", timeout=600, json={
            "model": "bench", "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"what is {i} + {2 * i + 1}?"}]})
        r.raise_for_status()
        return time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n_requests)))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"concurrency": concurrency, "requests": n_requests, "seconds": round(wall, 3),
            "requests_per_s": round(n_requests / wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "completion_tokens": tokens, "p50_s": round(statistics.median(lat), 4),
            "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="minimind2-small")
    p.add_argument("--vocab-size", type=int, default=6400, help="BPE size (the built-in text may give fewer)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--requests-per-client", type=int, default=2, help="requests = max(8, this x concurrency)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    tok = train_tokenizer(sm.pretrain_texts(sm.generate_problems(2000, seed=0, split="train")),
                          vocab_size=args.vocab_size)
    torch.manual_seed(0)
    model = MiniMindForCausalLM(preset(args.preset, vocab_size=tok.vocab_size, initializer_range=0.2))
    ckpt = save_model(model, tmp / "bench")
    tok.save(ckpt)
    levels = [int(c) for c in args.concurrency.split(",")]
    result = {"bench": "serve", "preset": args.preset, "params": model.num_parameters(), "vocab": tok.vocab_size,
              "max_tokens": args.max_tokens, "cpus": os.cpu_count(), "threads": args.threads,
              "baseline": [], "ours": []}

    port = free_port()
    base = one_at_a_time_server(ckpt, port)
    for c in levels:
        result["baseline"].append(load(f"http://127.0.0.1:{port}", c, max(8, args.requests_per_client * c),
                                       args.max_tokens))
    base.shutdown()

    import ray

    from serving.app import start
    from serving.engine import EngineConfig

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    served = start(model=ckpt, port=free_port(), name="bench", num_cpus=1,
                   batch=EngineConfig(max_batch_size=64, batch_wait_ms=10, threads=args.threads))
    load(served.url, 1, 2, 4)  # warm-up
    for c in levels:
        result["ours"].append(load(served.url, c, max(8, args.requests_per_client * c), args.max_tokens))
    result["engine"] = requests.get(served.url + "/health").json()
    served.shutdown()
    result["tokens_per_s_ratio"] = {b["concurrency"]: round(o["tokens_per_s"] / b["tokens_per_s"], 2)
                                    for b, o in zip(result["baseline"], result["ours"])}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
