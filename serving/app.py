"""The Ray Serve application: OpenAI endpoints, the chat page, live weight updates.

    served = start(model="runs/grpo_math/final", port=8000)       # or a MiniMindForCausalLM + tokenizer dir
    print(served.url)                                               # http://127.0.0.1:8000
    served.load_weights(learner.weights.remote(), version=12)       # every replica, in memory
    served.shutdown()

Weights never go through disk: `load_weights` posts the object ref on a small `WeightBoard`
actor; every replica long-polls the board from a background thread and swaps the state dict in
between two decode steps, then acknowledges. A replica that Serve starts later (autoscaling, or
the replacement of one that died) picks up the latest version the same way.
"""
# no `from __future__ import annotations`: FastAPI reads the route annotations (Request) at run time
import asyncio
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve as rayserve

from minimind.config import MiniMindConfig
from minimind.model import MiniMindForCausalLM
from runtime import openmp_env
from minimind.tokenizer import MiniMindTokenizer

from .config import ServeConfig
from .engine import EngineConfig
from .errors import APIError
from .protocol import parse_json
from .server import ModelServer, load_checkpoint

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("static") / "index.html"
BOARD_NAMESPACE = "minimind-serve"
DEPLOYMENT = "MiniMindServer"

api = FastAPI(title="MiniMind OpenAI-compatible server")


@api.exception_handler(APIError)
async def _api_error(_: Request, e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


@api.exception_handler(Exception)
async def _any_error(_: Request, e: Exception) -> JSONResponse:
    log.exception("request failed")
    return JSONResponse(APIError(f"internal error: {type(e).__name__}: {e}", status=500,
                                 type="server_error").body(), status_code=500)


@ray.remote(num_cpus=0)
class WeightBoard:
    """Latest published policy weights (an object ref, never the tensors' bytes) + replica acks."""

    def __init__(self) -> None:
        self.version = -1
        self.holder: list = []
        self.acks: dict[int, dict[str, str | None]] = {}
        self.changed = asyncio.Event()

    async def publish(self, holder: list, version: int) -> None:
        self.holder, self.version = holder, version
        self.acks.setdefault(version, {})
        self.changed.set()
        self.changed = asyncio.Event()

    async def newer(self, seen: int, timeout: float) -> tuple[int, list] | None:
        """(version, [ref]) once a version newer than `seen` is published, or None after `timeout`."""
        if self.version <= seen:
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        return (self.version, self.holder) if self.version > seen else None

    def ack(self, replica: str, version: int, error: str | None) -> None:
        self.acks.setdefault(version, {})[replica] = error

    def acked(self, version: int) -> dict[str, str | None]:
        return dict(self.acks.get(version, {}))


def _weight_listener(server: ModelServer, board_name: str) -> None:
    """Replica thread: wait for new weights on the board, hand them to the engine."""
    seen = -1
    board = None
    while True:
        try:
            board = board or ray.get_actor(board_name, namespace=BOARD_NAMESPACE)
            got = ray.get(board.newer.remote(seen, 30.0))
        except Exception as e:  # board gone (its owner exited): keep serving, look again later
            log.warning("weight board %s unreachable (%s)", board_name, e)
            board = None
            time.sleep(5)
            continue
        if got is None:
            continue
        version, holder = got
        seen = version
        state = ray.get(holder[0]) if isinstance(holder[0], ray.ObjectRef) else holder[0]
        b = board
        server.engine.load_weights(state, version,
                                   done=lambda v, err: b.ack.remote(server.replica_id, v, err))


def _replica_grpc_on_loopback() -> None:
    """Ray Serve (2.60) starts an inter-deployment gRPC server in every replica bound to [::]:0, every
    interface, and no setting changes that address (ray-project/ray issue 64544). On a loopback-only Ray
    (this node's address is 127.0.0.1: recipes.ray_session.init_ray) it is bound to 127.0.0.1 instead, so the
    whole app stays on this machine; on a cluster it is left as Serve binds it. Runs in the replica's
    constructor, which Serve calls before it starts that server."""
    if ray.util.get_node_ip_address() != "127.0.0.1":
        return
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "loopback_only", False):
        return

    def bind_loopback(server, address: str) -> int:
        return bind(server, address.replace("[::]", "127.0.0.1", 1))

    bind_loopback.loopback_only = True
    replica.add_port_to_grpc_server = bind_loopback


def _respond(out: Any):
    if isinstance(out, dict):
        return JSONResponse(out)
    return StreamingResponse(out, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _config_from_dict(d: dict) -> ServeConfig:
    d = dict(d)
    d["batch"] = EngineConfig(**d.get("batch", {}))
    return ServeConfig(**d)


# Serve pickles the class when it is decorated: everything it uses is defined above it.
@rayserve.deployment(name=DEPLOYMENT)
@rayserve.ingress(api)
class MiniMindServer:
    def __init__(self, cfg: dict, board_name: str, model_cfg: dict | None = None, state: list | None = None):
        _replica_grpc_on_loopback()
        cfg = _config_from_dict(cfg)
        if model_cfg is not None:      # an in-memory model handed to start(): its weights come by ref
            model = MiniMindForCausalLM(MiniMindConfig.from_dict(model_cfg)).to(cfg.device).eval()
            model.load_state_dict(ray.get(state[0]) if isinstance(state[0], ray.ObjectRef) else state[0])
            tok = MiniMindTokenizer.load(cfg.tokenizer)
            name = cfg.name or "minimind"
        else:
            model, tok, name = load_checkpoint(cfg)
        self.server = ModelServer(cfg, model, tok, name)
        self.page = PAGE.read_text()
        threading.Thread(target=_weight_listener, args=(self.server, board_name), daemon=True,
                         name="weight-listener").start()

    def check_health(self) -> None:
        if not self.server.engine.alive():
            raise RuntimeError("engine thread stopped")

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return self.page

    @api.get("/favicon.ico", status_code=204)
    async def favicon(self) -> Response:
        """Browsers ask for it on every page: no icon, and no 404 in the console."""
        return Response(status_code=204)

    @api.get("/health")
    async def health(self) -> dict:
        return {**self.server.health(), "actor": ray.get_runtime_context().get_actor_name()}

    @api.get("/v1/models")
    async def models(self) -> dict:
        return self.server.models()

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return _respond(await self.server.chat(parse_json(await request.body())))

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return _respond(await self.server.completion(parse_json(await request.body())))


# ---------------------------------------------------------------------- driver side
@dataclass
class Served:
    """A running app: its URL, a handle to the board for live weights, and shutdown."""

    url: str
    app_name: str
    board: Any

    def load_weights(self, weights: Any, version: int, wait: bool = True, timeout: float = 120.0) -> None:
        """Publish `weights` (an ObjectRef of a state dict, e.g. learner.weights.remote(), or a state
        dict) as `version`. With `wait`, return once every running replica has loaded it; a replica
        that cannot load it (wrong shapes) raises here with its message."""
        ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        ray.get(self.board.publish.remote([ref], version))
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while True:
            acks = ray.get(self.board.acked.remote(version))
            errors = [e for e in acks.values() if e]
            if errors:
                raise ValueError(errors[0])
            if len(acks) >= self.running_replicas():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"weights version {version}: {len(acks)} of {self.running_replicas()} "
                                   f"replicas loaded it within {timeout}s")
            time.sleep(0.05)

    def running_replicas(self) -> int:
        app = rayserve.status().applications[self.app_name]
        return app.deployments[DEPLOYMENT].replica_states.get("RUNNING", 0)

    def shutdown(self) -> None:
        rayserve.delete(self.app_name)
        ray.kill(self.board)


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    threads = cfg.batch.threads or max(1, int(cfg.num_cpus))
    # a replica shares its cores with Serve's proxy and the clients: OpenMP helpers sleep when idle
    env = {**openmp_env(overlapping=True), "OMP_NUM_THREADS": str(threads)}
    opts: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus,
                              "runtime_env": {"env_vars": env}},
    }
    if cfg.max_replicas is not None:
        opts["autoscaling_config"] = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                      "target_ongoing_requests": cfg.target_ongoing_requests}
    else:
        opts["num_replicas"] = cfg.replicas
    return opts


def start(model: str | Path | MiniMindForCausalLM | None = None, tokenizer: str | Path | None = None, *,
          host: str | None = None, port: int | None = None, config: ServeConfig | None = None,
          **overrides: Any) -> Served:
    """Start (or redeploy) the app on the current Ray cluster (ray.init is called if needed).

    `model`: a checkpoint folder / .safetensors / MiniMind .pth, or a MiniMindForCausalLM whose
    weights are shipped to the replicas by object ref (the RL driver's policy); `tokenizer`: its
    tokenizer folder. Other ServeConfig fields can be given as keyword arguments."""
    cfg = config or ServeConfig()
    changes: dict[str, Any] = dict(overrides)
    if host is not None:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    if tokenizer is not None:
        changes["tokenizer"] = str(tokenizer)
    in_memory = isinstance(model, torch.nn.Module)
    if model is not None and not in_memory:
        key = "init" if Path(model).suffix in (".pth", ".pt") else "model"
        changes[key] = str(model)
    cfg = dataclasses.replace(cfg, **changes)
    if not cfg.batch.threads:
        cfg = dataclasses.replace(cfg, batch=dataclasses.replace(cfg.batch, threads=max(1, int(cfg.num_cpus))))
    if in_memory and cfg.tokenizer is None:
        raise ValueError("start(model=<module>): pass tokenizer=<folder> too")
    if not in_memory:
        cfg.check_source()
    if not ray.is_initialized():
        ray.init()
    rayserve.start(http_options={"host": cfg.host, "port": cfg.port})
    board_name = f"{cfg.app_name}-weights"
    board = WeightBoard.options(name=board_name, namespace=BOARD_NAMESPACE, get_if_exists=True,
                                lifetime="detached").remote()
    args: dict[str, Any] = {"cfg": dataclasses.asdict(cfg), "board_name": board_name}
    if in_memory:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        args.update(model_cfg=model.config.to_dict(), state=[ray.put(state)])
    app = MiniMindServer.options(**deployment_options(cfg)).bind(**args)
    rayserve.run(app, name=cfg.app_name, route_prefix="/")
    shown = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    return Served(url=f"http://{shown}:{cfg.port}", app_name=cfg.app_name, board=board)
