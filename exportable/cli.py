"""Command line: argument parsing only. Errors become one line and an exit code
(2: usage or input, 1: a failed export or parity check)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._version import __version__
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
    sub = p.add_subparsers(dest="command", metavar="{list,recipe,verify,inspect,bench,run,serve,triton}", parser_class=_Parser)
    sub.required = True
    sub.add_parser("list", help="list the registered recipes")
    # add_help=False: `recipe NAME --help` lists that recipe's own options (cmd_recipe), which
    # argparse's built-in --help would answer with this parser's generic text instead.
    r = sub.add_parser("recipe", help="export a recipe and verify it against the original", add_help=False,
                       description="Recipe-specific options are listed by `recipe NAME --help`.")
    r.add_argument("-h", "--help", action="store_true", help="this help, or with NAME that recipe's options")
    r.add_argument("name", nargs="?",
                   help="a recipe name (`list`), a recipe file ./my_recipe.py[:Class], or pkg.module:Class")
    r.add_argument("--format", default="onnx", help="comma-separated: onnx,torchscript (default onnx)")
    r.add_argument("--out", type=Path, help="artifact folder (default artifacts/NAME)")
    r.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    r.add_argument("--allow-mismatch", action="store_true",
                   help="keep the artifact even if parity fails (the report shows the failure)")
    # extra model files (exportable.accelerate's variants), each verified against the original
    r.add_argument("--optimize", action="store_true",
                   help="also write model.optimized.onnx (fused attention/layernorm/gelu, fp32, same tolerance)")
    r.add_argument("--quantize", choices=("int8",), default=None,
                   help="also write model.int8.onnx (dynamic int8, cosine >= 0.99 per row; implies --optimize)")
    r.add_argument("--variants", default=None,
                   help="comma-separated accelerated variants to write beside model.onnx, each verified: "
                        "onnx-optimized, onnx-int8, onnx-fp16 (CUDA); --optimize and --quantize are shorthands")
    r.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime threads for the optimize/quantize stages (default: the CPUs this "
                        "container may use, from its cgroup quota and affinity)")
    r.set_defaults(recipe_parser=r)
    v = sub.add_parser("verify", help="replay an artifact's test vectors against its model files")
    v.add_argument("folder", type=Path)
    v.add_argument("--format", default=None, help="only these formats (default: all present)")
    v.add_argument("--no-hash-check", action="store_true",
                   help="replay even if a model file differs from the sha256 recorded at export")
    i = sub.add_parser("inspect", help="show an ONNX file's inputs, outputs, opset, custom ops, metadata")
    i.add_argument("model", type=Path)
    i.add_argument("--json", action="store_true", help="print JSON")
    _bench_parser(sub)
    _scale_parsers(sub)
    return p


def _scale_parsers(sub) -> None:
    """run / serve / triton: an artifact over a table, behind HTTP, or as a Triton model (exportable.serving)."""
    r = sub.add_parser("run", help="run an artifact over a .jsonl/.csv/.parquet table (local or Ray Data)")
    r.add_argument("artifact", type=Path)
    r.add_argument("input", type=Path, help=".jsonl, .csv or .parquet: one column per artifact input, optional id")
    r.add_argument("output", type=Path, help=".jsonl or .parquet; refused rows go to <stem>.errors.jsonl")
    r.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (this process) or ray (Ray Data; RAY_ADDRESS joins a cluster; needs the scale extra)")
    r.add_argument("--batch-size", type=int, default=32, help="rows per artifact call (default 32)")
    r.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (per Ray actor with --engine ray)")
    r.add_argument("--resume", action="store_true", help="finish an interrupted run without redoing its written parts")
    r.add_argument("--chunk-rows", type=int, default=4096, help="rows per crash-safe output part (default 4096)")
    s = sub.add_parser("serve", help="serve an artifact over HTTP on Ray Serve (POST /predict, GET /health)")
    s.add_argument("artifact", type=Path)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--replicas", type=int, default=1)
    t = sub.add_parser("triton", help="write a Triton Inference Server model repository for an artifact")
    t.add_argument("artifact", type=Path)
    t.add_argument("--out", type=Path, required=True, help="the model repository folder to write")
    t.add_argument("--name", default=None, help="model name in the repository (default: the artifact folder's)")


def _bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="time the original pipeline and every artifact variant side by side",
                       description="Recipe options (e.g. --model, --inputs) are accepted too. Writes bench.json "
                                   "and bench.png; see docs/performance.md.")
    b.add_argument("name", nargs="?", help="a recipe (with --run: default sentence_bert)")
    b.add_argument("--run", action="store_true", help="rows/s of `run` local and on Ray vs a plain loop over the "
                                                      "original pipeline, on the same rows (docs/serving.md)")
    b.add_argument("--rows", type=int, default=10_000, help="rows for --run (default 10000)")
    b.add_argument("--out", type=Path, help="folder for bench.json, bench.png and built models "
                                            "(default artifacts/bench/NAME)")
    b.add_argument("--artifact", type=Path, help="use the model files in this folder (model.onnx, model.pt, "
                                                 "model.optimized.onnx, model.int8.onnx) instead of building them")
    b.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,8,32; 1,32 with --tokenizer-only)")
    b.add_argument("--lengths", default="short,long",
                   help="short (16 tokens), long (128 tokens), mixed (the varied corpus); default short,long")
    b.add_argument("--variants", default=None, help="comma-separated subset of: original, torchscript, onnx, "
                                                    "onnx-optimized, onnx-int8, onnx-ids-optimized, onnx-fp16")
    b.add_argument("--threads", type=int, default=None,
                   help="threads for torch and ONNX Runtime (default: the CPUs this container may use, "
                        "from its cgroup quota and affinity, not the host's core count)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: CUDA execution provider with IO binding + an fp16 variant (falls back to cpu "
                        "with a message when onnxruntime has no CUDA)")
    b.add_argument("--seconds", type=float, default=8.0, help="timing budget per input shape (default 8)")
    b.add_argument("--quick", action="store_true", help="smoke mode: tiny calibration, few calls per variant")
    b.add_argument("--opset", type=int, default=None, help="ONNX opset for the models bench builds (default 18)")
    b.add_argument("--tokenizer-only", action="store_true",
                   help="text recipes: time the in-graph tokenizer alone against the HF fast tokenizer "
                        "(batch sizes default 1,32); writes bench-tokenizer.json")


def _recipe_options(cls, argv: list[str]) -> tuple[dict, list[str]]:
    """Parse the recipe's own options (declared by the recipe class) out of argv; the recipe
    converts and checks the values (Option.coerce)."""
    p = _Parser(prog=f"python -m exportable recipe {cls.name}", add_help=False)
    for opt in cls.options:
        p.add_argument(opt.flag, dest=opt.name, default=None, help=opt.help)
    ns, rest = p.parse_known_args(argv)
    return {k: v for k, v in vars(ns).items() if v is not None}, rest


def _recipe_help(cls) -> str:
    lines = [f"recipe {cls.name}: {cls.summary}", f"original pipeline: {cls.original_pipeline}",
             f"formats: {', '.join(cls.formats)}", "options:"]
    for opt in cls.options:
        extra = f" (choices: {', '.join(map(str, opt.choices))})" if opt.choices else ""
        default = f" [default {opt.default}]" if opt.default is not None else ""
        lines.append(f"  {opt.flag:<18} {opt.help}{extra}{default}")
    lines.append("common: --format onnx,torchscript  --out DIR  --opset N  --allow-mismatch  --optimize  "
                 "--quantize int8  --variants NAMES  --threads N")
    return "\n".join(lines)


def cmd_list(_args) -> int:
    from . import registry  # noqa: PLC0415  (api loads torch; --help stays instant)

    for entry in registry.entries():
        if entry.cls is None:
            print(f"{entry.name:<20} {'-':<20} {entry.problem} [{entry.origin}]")
        else:
            print(f"{entry.name:<20} {', '.join(entry.cls.formats):<20} {entry.cls.summary} [{entry.origin}]")
    return 0


def cmd_recipe(args, extra: list[str]) -> int:
    from . import api, registry  # noqa: PLC0415  (api loads torch; --help stays instant)
    from .parity import format_table  # noqa: PLC0415  (api loads torch; --help stays instant)

    if args.name is None:
        if args.help:
            print(args.recipe_parser.format_help())
            return 0
        raise InputError("recipe: give a recipe name, a file ./my_recipe.py or pkg.module:Class; "
                         "see `python -m exportable list`")
    cls = registry.resolve(args.name)
    if args.help:
        print(_recipe_help(cls))
        return 0
    options, rest = _recipe_options(cls, extra)
    if rest:
        raise InputError(f"unknown option {rest[0]!r} for recipe {args.name}; "
                         f"see `python -m exportable recipe {args.name} --help`")
    say = _progress(time.perf_counter())
    result = api.export_recipe(cls, out=args.out, formats=args.format,
                               opset=args.opset or api.DEFAULT_OPSET, allow_mismatch=args.allow_mismatch,
                               progress=say, optimize=args.optimize, quantize=args.quantize,
                               threads=args.threads, variants=args.variants, **options)
    for fmt, results in result.report.parity.items():
        print(format_table(results, f"{fmt} artifact vs {result.report.original}:"))
    verdict = "PASSED" if result.passed else "FAILED (kept because of --allow-mismatch)"
    identical = token_identical(result.report.parity)
    print(f"parity {verdict}{identical}; wrote {result.out}/ ({', '.join(sorted(result.report.files))}, vectors/)")
    return 0 if result.passed else 1


def token_identical(parity: dict) -> str:
    """"; prompts token-identical: onnx 15/15, onnx-int8 14/15" for a recipe with token outputs."""
    from .parity import summary_rows  # noqa: PLC0415  (api loads torch; --help stays instant)

    counts = []
    for name, results in parity.items():
        row = next((r for r in summary_rows(results) if r.get("rows")), None)
        if row is not None:
            counts.append(f"{name} {row['identical_rows']}/{row['rows']}")
    return f"; prompts token-identical: {', '.join(counts)}" if counts else ""


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if not values or min(values) < 1:
        raise InputError(f"{flag} {text!r}: expected positive integers, e.g. 1,8,32")
    return values


def cmd_bench(args, extra: list[str]) -> int:
    from . import api, bench, registry  # noqa: PLC0415  (api loads torch; --help stays instant)

    if args.run:
        return _bench_run(args)
    if args.name is None:
        raise InputError("bench: give a recipe name (see `python -m exportable list`), or --run")
    options, rest = _recipe_options(registry.resolve(args.name), extra)
    if rest:
        raise InputError(f"unknown option {rest[0]!r} for bench {args.name}; see `python -m exportable bench --help`")
    if registry.resolve(args.name).generates_text:  # timed in new tokens/s against generate
        api.quiet_libraries()
        recipe = registry.resolve(args.name)(**options)
        out = args.out or Path("artifacts") / "bench" / recipe.name
        data = bench.bench_generation(recipe, out, batches=_int_list(args.batch_sizes or "1,8", "--batch-sizes"),
                                      seconds=args.seconds, threads=args.threads, opset=args.opset or api.DEFAULT_OPSET,
                                      progress=_progress(time.perf_counter()))
        print(bench.format_generation_table(data))
        print(f"wrote {data['json_path']}")
        return 1 if any(r["status"] != "ok" for r in data["rows"]) else 0
    if args.tokenizer_only:
        api.quiet_libraries()
        data = bench.bench_tokenizer(args.name, out=args.out, threads=args.threads,
                                     batches=_int_list(args.batch_sizes or "1,32", "--batch-sizes"),
                                     seconds=args.seconds, opset=args.opset or api.DEFAULT_OPSET, **options)
        print(bench.format_tokenizer_table(data))
        print(f"wrote {data['json_path']}")
        return 1 if any(r["status"] != "ok" for r in data["rows"]) else 0
    result = bench.run_bench(
        args.name, out=args.out, artifact=args.artifact, batches=_int_list(args.batch_sizes or "1,8,32", "--batch-sizes"),
        lengths=[x.strip() for x in args.lengths.split(",") if x.strip()],
        variants=[x.strip() for x in args.variants.split(",") if x.strip()] if args.variants else None,
        threads=args.threads, device=args.device, seconds=args.seconds, quick=args.quick,
        opset=args.opset or api.DEFAULT_OPSET, progress=_progress(time.perf_counter()), **options)
    print(result.table)
    print(f"wrote {result.json_path}" + (f" and {result.png_path}" if result.png_path else ""))
    failed = [n for n, v in result.data["variants"].items() if v["status"] == "failed"]
    if failed:
        print(f"parity FAILED for {', '.join(failed)} (not timed)")
    return 1 if failed else 0


def _bench_run(args) -> int:
    from .bench import throughput  # noqa: PLC0415  (api loads torch; --help stays instant)

    engines = ("local", "ray") if _ray_installed() else ("local",)
    results = throughput.run_throughput(args.name or "sentence_bert", out=args.out, artifact=args.artifact,
                                        rows=args.rows, threads=args.threads, engines=engines,
                                        progress=_progress(time.perf_counter()))
    print(throughput.format_run_table(results))
    return 0


def _ray_installed() -> bool:
    try:
        import ray  # noqa: F401, PLC0415  (probing the optional scale extra)
    except ImportError:
        return False
    return True


def cmd_verify(args) -> int:
    from . import api  # noqa: PLC0415  (api loads torch; --help stays instant)
    from .parity import format_table  # noqa: PLC0415  (api loads torch; --help stays instant)

    formats = args.format.split(",") if args.format else None
    try:
        results = api.verify_artifact(args.folder, formats, check_hash=not args.no_hash_check)
    except ParityError as exc:
        print(exc.table)
        raise
    for fmt, res in results.items():
        print(format_table(res, f"{args.folder} {fmt} vs recorded original outputs:"))
    print(f"verify PASSED: {sum(len(r) for r in results.values())} cases")
    return 0


def cmd_inspect(args) -> int:
    from .inspect import inspect_model  # noqa: PLC0415  (api loads torch; --help stays instant)

    info = inspect_model(args.model)
    if args.json:
        print(json.dumps(info, indent=1, ensure_ascii=False))
        return 0
    print(f"{info['path']}  {info['size_bytes'] / 2**20:.1f} MiB  opset {info['opset']}  "
          f"ir {info['ir_version']}  nodes {info['nodes']}")
    print("custom-op domains: " + (", ".join(info["custom_op_domains"]) or "none"))
    print(f"integrity: {info['integrity']}")
    for kind in ("inputs", "outputs"):
        print(f"{kind}:")
        for v in info[kind]:
            print(f"  {v['name']:<22} {v['dtype']:<8} {v['shape']}")
    print("metadata:")
    for k, v in info["metadata"].items():
        print(f"  {k} = {v if len(v) < 160 else v[:157] + '...'}")
    return 0


def cmd_scale(args) -> int:
    from . import serving  # noqa: PLC0415  (api loads torch; --help stays instant)

    if args.command == "triton":
        print(f"wrote {serving.write_triton_repository(args.artifact, args.out, args.name)}")
        return 0
    if args.command == "serve":
        return serving.serve(args.artifact, args.host, args.port, args.replicas, say=_progress(time.perf_counter()))
    summary = serving.run_artifact(args.artifact, args.input, args.output, args.engine, args.batch_size,
                                   args.threads, args.resume, args.chunk_rows, say=_progress(time.perf_counter()))
    print(summary.line())
    return summary.exit_code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _base_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command == "recipe":
            return cmd_recipe(args, extra)
        if args.command == "bench":
            return cmd_bench(args, extra)
        if extra:
            raise InputError(f"unrecognized arguments: {' '.join(extra)}; see `python -m exportable --help`")
        return {"list": cmd_list, "verify": cmd_verify, "inspect": cmd_inspect, "run": cmd_scale, "serve": cmd_scale,
                "triton": cmd_scale}[args.command](args)
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
