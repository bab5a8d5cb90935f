"""The machine a bench runs on: CPUs, versions, the fp32 roofline, and the process's memory."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from .. import runtime


def status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine_info(threads: int) -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "threads": threads,
            "available_cpus": runtime.available_cpus(), "os_cpu_count": os.cpu_count(),
            "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers()}
    info["torch"] = torch.__version__
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    return info


def matmul_peak_gflops(threads: int, seconds: float = 1.0) -> float:
    """The roofline for fp32 figures: the best GFLOP/s of ONNX Runtime's own fp32 MatMul
    ([2048, 384] x [384, 1536], the shape of BERT's FFN at 64 x 32 tokens) on these threads."""
    m, k, n = 2048, 384, 1536
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "peak",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = {"x": rng.standard_normal((m, k)).astype(np.float32)}
    session.run(None, x)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        session.run(None, x)
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def rss_mib() -> float | None:
    kib = status_kib("VmRSS")
    return None if kib is None else kib / 1024
