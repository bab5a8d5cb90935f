"""TorchScript capture: trace an nn.Module (or keep a ScriptModule as is) and save it with
its input/output names so the runtime can map positional results back to names.

torch.jit is deprecated in favour of torch.export but still works; its warnings are caught
and kept in the report instead of shown to the user.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ExportError
from ..recipe import TensorSpec
from ..runtime import TorchScriptRunner
from . import Capture, distinct_messages


def export(module, example, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], path: Path,
           **_options) -> Capture:
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[s.name])) for s in inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if isinstance(module, torch.jit.ScriptModule):
                scripted, strategy = module, "script"
            else:
                with torch.inference_mode(False), torch.no_grad():
                    scripted = torch.jit.trace(module, args, check_trace=False, strict=False)
                strategy = "trace"
            info = {
                "inputs": [s.name for s in inputs],
                "outputs": [s.name for s in outputs],
                "input_specs": [s.as_dict() for s in inputs],
            }
            torch.jit.save(scripted, str(path), _extra_files={TorchScriptRunner.EXTRA: json.dumps(info)})
        except Exception as exc:
            raise ExportError(f"TorchScript capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    return Capture(path, strategy, None, distinct_messages(caught))
