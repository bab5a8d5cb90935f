"""Command line: argument parsing only. Errors become one line and an exit code
(2: usage or input, 1: a failed export or parity check)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__
from .errors import ExportableError, InputError, ParityError


def _progress(start: float):
    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + exits 2; keep it to one line
        raise InputError(f"{message}; see `python -m exportable {self.prog.split()[-1]} --help`")


def _base_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m exportable", description="Export models to verified single-file artifacts.")
    p.add_argument("--version", action="version", version=f"exportable {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{list,recipe,verify,inspect}", parser_class=_Parser)
    sub.required = True
    sub.add_parser("list", help="list the registered recipes")
    r = sub.add_parser("recipe", help="export a recipe and verify it against the original",
                       description="Recipe-specific options are listed by `recipe NAME --help`.")
    r.add_argument("name")
    r.add_argument("--format", default="onnx", help="comma-separated: onnx,torchscript (default onnx)")
    r.add_argument("--out", type=Path, help="artifact folder (default artifacts/NAME)")
    r.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    r.add_argument("--allow-mismatch", action="store_true",
                   help="keep the artifact even if parity fails (the report shows the failure)")
    v = sub.add_parser("verify", help="replay an artifact's test vectors against its model files")
    v.add_argument("folder", type=Path)
    v.add_argument("--format", default=None, help="only these formats (default: all present)")
    i = sub.add_parser("inspect", help="show an ONNX file's inputs, outputs, opset, custom ops, metadata")
    i.add_argument("model", type=Path)
    i.add_argument("--json", action="store_true", help="print JSON")
    return p


def _recipe_options(name: str, argv: list[str]) -> tuple[dict, list[str]]:
    """Parse the recipe's own options (declared by the recipe) out of argv."""
    from . import registry

    cls = registry.get(name)
    p = _Parser(prog=f"python -m exportable recipe {name}", add_help=False)
    for opt in cls.options:
        p.add_argument(opt.flag, dest=opt.name, type=opt.type, default=None, help=opt.help,
                       choices=opt.choices)
    ns, rest = p.parse_known_args(argv)
    return {k: v for k, v in vars(ns).items() if v is not None}, rest


def _recipe_help(name: str) -> str:
    from . import registry

    cls = registry.get(name)
    lines = [f"recipe {name}: {cls.summary}", f"original pipeline: {cls.original_pipeline}",
             f"formats: {', '.join(cls.formats)}", "options:"]
    for opt in cls.options:
        extra = f" (choices: {', '.join(map(str, opt.choices))})" if opt.choices else ""
        default = f" [default {opt.default}]" if opt.default is not None else ""
        lines.append(f"  {opt.flag:<18} {opt.help}{extra}{default}")
    lines.append("common: --format onnx,torchscript  --out DIR  --opset N  --allow-mismatch")
    return "\n".join(lines)


def cmd_list(_args) -> int:
    from . import registry

    for name in registry.names():
        cls = registry.get(name)
        print(f"{name:<20} {', '.join(cls.formats):<20} {cls.summary}")
    return 0


def cmd_recipe(args, extra: list[str]) -> int:
    from . import api
    from .parity import format_table

    if "-h" in extra or "--help" in extra:
        print(_recipe_help(args.name))
        return 0
    options, rest = _recipe_options(args.name, extra)
    if rest:
        raise InputError(f"unknown option {rest[0]!r} for recipe {args.name}; "
                         f"see `python -m exportable recipe {args.name} --help`")
    say = _progress(time.perf_counter())
    result = api.export_recipe(args.name, out=args.out, formats=args.format,
                               opset=args.opset or api.DEFAULT_OPSET, allow_mismatch=args.allow_mismatch,
                               progress=say, **options)
    for fmt, results in result.report.parity.items():
        print(format_table(results, f"{fmt} artifact vs {result.report.original}:"))
    verdict = "PASSED" if result.passed else "FAILED (kept because of --allow-mismatch)"
    print(f"parity {verdict}; wrote {result.out}/ ({', '.join(sorted(result.report.files))}, vectors/)")
    return 0 if result.passed else 1


def cmd_verify(args) -> int:
    from . import api
    from .parity import format_table

    formats = args.format.split(",") if args.format else None
    try:
        results = api.verify_artifact(args.folder, formats)
    except ParityError as exc:
        print(exc.table)
        raise
    for fmt, res in results.items():
        print(format_table(res, f"{args.folder} {fmt} vs recorded original outputs:"))
    print(f"verify PASSED: {sum(len(r) for r in results.values())} cases")
    return 0


def cmd_inspect(args) -> int:
    from .inspect import inspect_model

    info = inspect_model(args.model)
    if args.json:
        print(json.dumps(info, indent=1, ensure_ascii=False))
        return 0
    print(f"{info['path']}  {info['size_bytes'] / 2**20:.1f} MiB  opset {info['opset']}  "
          f"ir {info['ir_version']}  nodes {info['nodes']}")
    print("custom-op domains: " + (", ".join(info["custom_op_domains"]) or "none"))
    for kind in ("inputs", "outputs"):
        print(f"{kind}:")
        for v in info[kind]:
            print(f"  {v['name']:<22} {v['dtype']:<8} {v['shape']}")
    print("metadata:")
    for k, v in info["metadata"].items():
        print(f"  {k} = {v if len(v) < 160 else v[:157] + '...'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _base_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command == "recipe":
            return cmd_recipe(args, extra)
        if extra:
            raise InputError(f"unrecognized arguments: {' '.join(extra)}; see `python -m exportable --help`")
        return {"list": cmd_list, "verify": cmd_verify, "inspect": cmd_inspect}[args.command](args)
    except ParityError as exc:
        if exc.table:
            print(exc.table, file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ExportableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
