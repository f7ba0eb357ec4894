"""Serve a MiniMind checkpoint over an OpenAI-compatible HTTP API on Ray Serve, with a chat page at /.

    python experiments/serve.py --model runs/grpo_math/final                # http://127.0.0.1:8000
    python experiments/serve.py --init full_sft_512.pth --tokenizer minimind_tokenizer/
    python experiments/serve.py --model runs/sft/final --replicas 2 --host 0.0.0.0 --port 8080
    python experiments/serve.py --model runs/sft/final --max-replicas 4       # Serve autoscaling
    python experiments/serve.py --model runs/sft/final --engine vllm          # vLLM backend, if installed
    python experiments/serve.py --model runs/sft/final --ray-address auto     # on the `ray up` cluster

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET / (chat page).
Without --ray-address the Ray it starts listens on 127.0.0.1 only and ends with this process (however it
ends). Ctrl-C (or SIGTERM) stops the app. See docs/serving.md.
"""
from __future__ import annotations

import time

from recipes.cli import parse_config
from recipes.errors import run_or_exit
from serving.config import ServeConfig
from serving.server import check_model


def check_inputs(cfg: ServeConfig) -> None:
    """The checkpoint and tokenizer the replicas will load, and the engine's availability."""
    check_model(cfg)
    if cfg.engine == "vllm":
        from serving.vllm_backend import unavailable

        why = unavailable(None, cfg.device)   # the model's head size is checked again by each replica
        if why:
            raise ValueError(why)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ServeConfig, argv, description=__doc__.split("\n")[0])
    # in this process, before Ray starts: one line and exit 2, not a traceback from a replica
    run_or_exit(lambda: check_inputs(cfg))
    from recipes.ray_session import init_ray   # the RL recipes' Ray: loopback only, ends with this process
    from serving.app import start

    init_ray(cfg.ray_address, dashboard=False, dashboard_host="127.0.0.1", overlapping=True)
    served = start(config=cfg)
    print(f"MiniMind is served at {served.url}  (chat page: {served.url}/ , OpenAI base_url: {served.url}/v1)",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        served.shutdown()


if __name__ == "__main__":
    main()
