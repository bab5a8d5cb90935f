"""`python -m exportable serve`: an artifact behind HTTP on Ray Serve.

    POST /predict  {"inputs": {name: value}}  ->  {"outputs": {name: value}}
    GET  /health   ->  {"status": "ok", "inputs": ..., "outputs": ...}

Concurrent requests are batched (serve.batch) into one artifact call. A bad body is a 4xx with
a one-line reason ({"error": ...}) and the server goes on serving.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

from .. import api, runtime
from ..errors import InputError
from .ray_engine import start_ray
from .requests import MAX_BODY_BYTES, RequestError, parse_request, run_together

MAX_BATCH = 32
BATCH_WAIT_S = 0.005  # how long the first request of a batch waits for others to join it


class ArtifactServer:
    """One Serve replica: one ONNX Runtime session."""

    def __init__(self, artifact: str, threads: int):
        self.runner = api.load_artifact(artifact, threads=threads)
        self.name = Path(artifact).name

    async def __call__(self, request):
        from starlette.responses import JSONResponse  # noqa: PLC0415  (comes with ray[serve])

        try:
            if request.url.path.rstrip("/") == "/health" and request.method == "GET":
                return JSONResponse({"status": "ok", "artifact": self.name,
                                     "inputs": {n: list(s) for n, s in self.runner.input_specs.items()},
                                     "outputs": self.runner.output_names})
            if request.url.path.rstrip("/") != "/predict" or request.method != "POST":
                raise RequestError(404, "no such route; use POST /predict or GET /health")
            size = int(request.headers.get("content-length") or 0)
            if size > MAX_BODY_BYTES:
                raise RequestError(413, f"body of {size:,} bytes is over the {MAX_BODY_BYTES:,}-byte limit")
            answer = await self.predict(parse_request(await request.body(), self.runner.input_specs))
            if isinstance(answer, RequestError):
                raise answer
            # how many requests shared this one's artifact call: dynamic batching, observable
            return JSONResponse({"outputs": answer["outputs"]}, headers={"X-Batched-Requests": str(answer["batched"])})
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def predict(self, feed):
        return await self._batch(feed)

    async def _batch(self, feeds):  # build_app's subclass batches concurrent calls (serve.batch)
        return run_together(self.runner, [feeds])[0]


def build_app(artifact: Path, replicas: int):
    """The Serve application: `replicas` copies of ArtifactServer, requests batched per replica."""
    from ray import serve  # noqa: PLC0415  (Ray is the optional scale extra)

    @serve.deployment(name="artifact", num_replicas=replicas, ray_actor_options={"num_cpus": 0.5})
    class BatchedArtifactServer(ArtifactServer):
        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
        async def _batch(self, feeds):
            return run_together(self.runner, feeds)

    threads = max(1, runtime.available_cpus() // replicas)
    return serve, BatchedArtifactServer.bind(str(artifact.resolve()), threads)


def serve(artifact: str | Path, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
          say: Callable[[str], None] = print) -> int:
    """Serve until SIGINT/SIGTERM, then shut Ray Serve and Ray down."""
    artifact = Path(artifact)
    if not artifact.is_dir():
        raise InputError(f"{artifact} is not an artifact folder; pass e.g. artifacts/sentence_bert")
    if replicas < 1:
        raise InputError(f"--replicas {replicas}: expected a positive integer")
    api.load_artifact(artifact)  # a broken artifact fails here, in one line, not inside a replica
    ray = start_ray(say)
    serve_module, app = build_app(artifact, replicas)
    serve_module.start(http_options={"host": host, "port": port})
    serve_module.run(app, name="exportable", route_prefix="/")
    say(f"serving {artifact} on http://{host}:{port} (POST /predict, GET /health); Ctrl-C stops")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve_module.shutdown()
    ray.shutdown()
    say("stopped")
    return 0
