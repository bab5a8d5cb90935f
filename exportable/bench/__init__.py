"""`python -m exportable bench RECIPE`: the original pipeline and every artifact variant, timed
side by side in one process on the same inputs, each gated by parity first.

Variants (those a recipe supports): `original` (e.g. SentenceTransformer.encode, tokenization
included), `torchscript`, `onnx` (the exported artifact), `onnx-optimized` (fused, fp32),
`onnx-int8` (accuracy-aware dynamic int8), and for text recipes whose artifact takes strings
`onnx-ids-optimized` (the HF tokenizer in Python + the ids-in fused graph) to show what the
in-graph tokenizer costs. With `--device cuda` and a CUDA build of onnxruntime, the ONNX
variants run on the CUDA execution provider with IO binding, plus `onnx-fp16`.

How it measures (see docs/performance.md):
- every timed call is the whole user call: the recipe's feed (tokenization when the artifact
  takes ids) + inference; the original includes its own preprocessing;
- one process, variants interleaved in blocks of calls (~0.25 s each, rotating order) so
  machine noise hits all of them alike; ONNX Runtime threads spin during a run (its
  default, the latency a service gets) and are told to stop when the run returns
  (session.force_spinning_stop), so no idle pool steals CPU from the variant that runs next;
- `x orig` is paired: per round, the original's block median over the variant's, then the
  median of those ratios (quartiles in the JSON and the table's `q1-q3`); the host's speed
  drifts between rounds, and each round's two blocks meet the same drift;
- median, p95, best, and CPU time per call (process user+sys over all threads: robust to other
  load on the machine, unlike wall time); throughput = batch / median; GFLOP/s = FLOPs of the
  real (unpadded) tokens / median, with FLOPs per token counted from the graph's weights;
- peak memory = the rise of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs)
  over the RSS before the call, during the first call at each shape (when arenas grow);
  tracemalloc is not used: it only sees Python allocations, not torch's or ORT's.
- a variant whose outputs break its tolerance on the bench inputs is `failed` and not timed.
"""

from .command import BenchResult, run_bench
from .contenders import ALL_VARIANTS, MODEL_FILES, cuda_available, original_on_gpu, run_bound
from .generation import bench_generation, format_generation_table
from .inputs import BATCHES, LENGTHS, bench_case, flops_per_token, real_tokens
from .output import format_table, write_chart
from .timing import Measurement, measure, paired_speedup
from .tokenizer import bench_tokenizer, format_tokenizer_table

__all__ = ["ALL_VARIANTS", "BATCHES", "LENGTHS", "MODEL_FILES", "BenchResult", "Measurement", "bench_case",
           "cuda_available", "flops_per_token", "format_table", "measure", "original_on_gpu", "paired_speedup",
           "real_tokens", "run_bench", "run_bound", "write_chart", "bench_tokenizer", "format_tokenizer_table",
           "bench_generation", "format_generation_table"]
