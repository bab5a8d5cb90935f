"""Crash-safe output: results go to numbered parts in a hidden folder beside OUTPUT, and a
journal records each part once it is complete; OUTPUT itself appears only when the run ends
(joined into a temporary file, then renamed), so a killed run never leaves a half-written OUTPUT.

    .OUTPUT.parts/journal.jsonl    line 1: the run's settings; then {"part": i, "rows": n, ...}
    .OUTPUT.parts/part-000000.jsonl|parquet, errors-000000.jsonl

A part is written to a temporary name and renamed, and only then journaled (fsync), so a part
named in the journal is whole. `--resume` starts after the journaled parts: nothing already
written is computed again, and a part the crash interrupted is simply written again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError
from .tables import join_parts, write_part


def errors_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.errors.jsonl")


def run_settings(source: Path, artifact: Path, output: Path, chunk_rows: int) -> dict:
    """What a resumed run must share with the one it finishes (else its parts would not fit)."""
    stat = source.stat()
    return {"input": str(source.resolve()), "input_bytes": stat.st_size, "input_mtime_ns": stat.st_mtime_ns,
            "artifact": str(artifact.resolve()), "output_format": output.suffix, "chunk_rows": chunk_rows}


class Parts:
    def __init__(self, output: Path, settings: dict, resume: bool, say: Callable[[str], None]):
        self.output = output
        self.folder = output.with_name(f".{output.name}.parts")
        self.journal = self.folder / "journal.jsonl"
        self.settings = settings
        self.done = self._resume(say) if resume else 0
        if not self.done:
            if self.folder.exists():
                say(f"discarding the unfinished parts of an earlier run in {self.folder} (pass --resume to keep them)"
                    if not resume else f"starting over in {self.folder}")
                shutil.rmtree(self.folder)
            self.folder.mkdir()
            self._append(settings)

    @property
    def start_row(self) -> int:
        return self.done * self.settings["chunk_rows"]

    def _resume(self, say) -> int:
        if not self.journal.is_file():
            say(f"--resume: no unfinished run for {self.output}; starting from the first row")
            return 0
        lines = self.journal.read_text().splitlines()
        try:
            recorded = json.loads(lines[0])
        except (IndexError, json.JSONDecodeError):
            return 0
        changed = sorted(k for k in self.settings if recorded.get(k) != self.settings[k])
        if changed:
            raise InputError(f"--resume: {', '.join(changed)} changed since the interrupted run; run without "
                             f"--resume to start over")
        done = 0
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # the crash tore the last line: that part is written again
            if entry.get("part") != done:
                break
            done += 1
        # keep only the whole lines: the next entry must not be glued to a torn one
        self.journal.write_text("".join(line + "\n" for line in lines[:done + 1]))
        return done

    def part_paths(self, index: int) -> tuple[Path, Path]:
        return (self.folder / f"part-{index:06d}{self.output.suffix}", self.folder / f"errors-{index:06d}.jsonl")

    def commit(self, index: int, results: list[dict], refused: list[dict]) -> None:
        """Write part `index` whole, then journal it."""
        for rows, path in zip((results, refused), self.part_paths(index)):
            temporary = path.with_name(f"{path.stem}.tmp{path.suffix}")  # the suffix picks the format
            write_part(rows, temporary)
            os.replace(temporary, path)
        self._append({"part": index, "rows": len(results), "refused": len(refused)})

    def _append(self, entry: dict) -> None:
        with self.journal.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def counts(self) -> tuple[int, int]:
        entries = [json.loads(line) for line in self.journal.read_text().splitlines()[1:]]
        return sum(e["rows"] for e in entries), sum(e["refused"] for e in entries)

    def finish(self, parts: int) -> tuple[int, int]:
        """Join parts 0..parts-1 into OUTPUT and its errors file (each via a temporary file and a
        rename), then remove the parts folder. Returns (rows written, rows refused)."""
        written, refused = self.counts()
        outputs = [self.part_paths(i) for i in range(parts)]
        targets = [(self.output, [o for o, _ in outputs])]
        errors = errors_path(self.output)
        if refused:
            targets.append((errors, [e for _, e in outputs]))
        elif errors.exists():
            errors.unlink()  # an earlier run's refusals would describe rows this run accepted
        for target, sources in targets:
            temporary = target.with_name(f".{target.stem}.tmp{target.suffix}")
            join_parts(sources, temporary)
            os.replace(temporary, target)
        shutil.rmtree(self.folder)
        return written, refused
