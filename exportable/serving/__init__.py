"""Use an artifact at scale: `run` over a table (this process or Ray Data), `serve` it over
HTTP (Ray Serve), or hand it to Triton Inference Server (`triton`). See docs/serving.md.

    run_artifact(artifact, input, output, engine="local"|"ray", ...)   -> RunSummary
    serve(artifact, host, port, replicas)                              blocks until Ctrl-C
    write_triton_repository(artifact, out)                             -> the model folder
"""

from .command import DEFAULT_BATCH, ENGINES, RunSummary, run_artifact
from .predict import Outcome, predict_rows
from .rows import RowError, RowFeeder
from .server import serve
from .triton import write_triton_repository

__all__ = ["DEFAULT_BATCH", "ENGINES", "Outcome", "RowError", "RowFeeder", "RunSummary", "predict_rows",
           "run_artifact", "serve", "write_triton_repository"]
