"""report.json + report.md beside each artifact: stages, parity, versions, timings."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from .parity import CaseResult, format_table, summary_rows

PACKAGES = ("exportable", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-extensions",
            "onnxscript", "transformers", "tokenizers", "sentence-transformers", "numpy",
            "tensorflow", "tensorflow-text", "tf2onnx")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


@dataclass
class Stage:
    name: str
    status: str = "ok"  # ok | failed | skipped
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)


@dataclass
class Report:
    recipe: str
    options: dict
    original: str
    source: dict
    stages: list[Stage] = field(default_factory=list)
    parity: dict[str, list[CaseResult]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    tolerances: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "recipe": self.recipe, "options": self.options, "original_pipeline": self.original,
            "source": self.source, "versions": versions(), "files": self.files, "tolerances": self.tolerances,
            "stages": [asdict(s) for s in self.stages],
            "parity": {fmt: {"passed": all(r.passed for r in results), "summary": summary_rows(results),
                             "cases": [{"case": r.case, "failures": r.failures,
                                        "metrics": [m.as_dict() for m in r.metrics]} for r in results]}
                       for fmt, results in self.parity.items()},
        }

    def markdown(self) -> str:
        lines = [f"# {self.recipe}", "", f"Original pipeline: `{self.original}`", "",
                 f"Source: {self.source.get('name')} (sha256 {self.source.get('sha256', '')[:16]}...)", "",
                 "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
        lines += [f"| {s.name} | {s.status} | {s.seconds:.2f} |" for s in self.stages]
        for fmt, results in self.parity.items():
            lines += ["", f"## Parity: {fmt} vs original", "", "```", format_table(results), "```"]
        lines += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in versions().items()]
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> None:
        (folder / "report.json").write_text(json.dumps(self.as_dict(), indent=1, default=str) + "\n")
        (folder / "report.md").write_text(self.markdown())


def record_runtime(folder: Path, runtime: str, info: dict) -> None:
    """Add a non-Python runtime's replay result (versions, passed/failed/expected failures) to an
    artifact's report, so users see which runtime versions it was proven on."""
    path = Path(folder) / "report.json"
    data = json.loads(path.read_text())
    data.setdefault("runtimes", {})[runtime] = info
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    md = Path(folder) / "report.md"
    text = md.read_text().split("\n## Runtimes\n")[0].rstrip("\n")
    rows = "\n".join(f"- {name}: {json.dumps(r, ensure_ascii=False)}" for name, r in data["runtimes"].items())
    md.write_text(f"{text}\n\n## Runtimes\n\n{rows}\n")
