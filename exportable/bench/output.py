"""The bench table (text) and chart (PNG)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def format_table(data: dict) -> str:
    m = data["machine"]
    lines = [f"{data['recipe']} bench ({'quick' if data['quick'] else 'full'}): {m['threads']} threads "
             f"(available_cpus {m['available_cpus']}, os.cpu_count {m['os_cpu_count']}), device {m['device']}, "
             f"onnxruntime {m['onnxruntime']}, torch {m.get('torch', '-')}",
             f"load average before {m.get('load_average_before')} after {m.get('load_average_after')}; "
             f"FLOPs/token {data['flops_per_token'] / 1e6:.1f}M ({data['flops_source']})" if data["flops_per_token"]
             else "FLOPs/token unknown",
             f"roofline: fp32 MatMul peak {m['fp32_matmul_peak_gflops']} GFLOP/s on these threads (%peak = GFLOP/s "
             "over it; int8 may exceed it)" if m.get("fp32_matmul_peak_gflops") else "", ""]
    lines.append("variants (parity on the bench inputs vs the original):")
    for name, v in data["variants"].items():
        p = v["parity"] or {}
        cos = p.get("min_cosine")
        detail = (f"max abs {p['max_abs']:.2e}, min cos {cos:.7f}" if p.get("max_abs") is not None and cos is not None
                  else "")
        lines.append(f"  {name:<19} {v['status']:<11} {detail}  {v['reason'][:120]}")
    lines.append("")
    head = (f"{'input':<7}{'batch':>5}  {'variant':<19}{'median ms':>10}{'p95 ms':>9}{'items/s':>9}{'GFLOP/s':>8}"
            f"{'%peak':>6}{'x orig':>8}{'q1-q3':>11}{'cpu ms':>9}{'x cpu':>7}{'peak MiB':>9}")
    lines.append(head)
    for r in data["results"]:
        label = f"{r['length']}{'' if r['tokens'] is None else ''}"
        if r["status"] != "ok":
            lines.append(f"{label:<7}{r['batch']:>5}  {r['variant']:<19}{r['status'].upper()}: {r['reason'][:90]}")
            continue

        def f(x, spec):
            return format(x, spec) if x is not None else "-".rjust(int(spec.split(".")[0]))

        lines.append(f"{label:<7}{r['batch']:>5}  {r['variant']:<19}{f(r['median_ms'], '10.2f')}{f(r['p95_ms'], '9.2f')}"
                     f"{f(r['items_per_s'], '9.1f')}{f(r['gflops'], '8.1f')}{f(_percent_of_peak(r, m), '6.0f')}"
                     f"{'' if r['speedup'] is None else format(r['speedup'], '7.2f') + 'x'}"
                     f"{_quartiles(r.get('speedup_iqr')):>11}"
                     f"{f(r['cpu_ms'], '9.2f')}{'' if r['cpu_speedup'] is None else format(r['cpu_speedup'], '6.2f') + 'x'}"
                     f"{f(r['peak_rss_delta_mib'], '9.1f')}")
    return "\n".join(lines)


def _quartiles(iqr: list | None) -> str:
    return "-" if not iqr else f"{iqr[0]:.2f}-{iqr[1]:.2f}"


def _percent_of_peak(row: dict, machine: dict) -> float | None:
    peak = machine.get("fp32_matmul_peak_gflops")
    return None if not peak or row.get("gflops") is None else 100 * row["gflops"] / peak


COLORS = [(90, 90, 90), (214, 96, 77), (67, 147, 195), (33, 102, 172), (27, 158, 119), (230, 171, 2), (117, 112, 179)]


def write_chart(data: dict, path: Path) -> None:
    """Speed-up over the original per (input, batch), one bar per variant, as a PNG (Pillow,
    which torchvision already brings; no matplotlib)."""
    rows = [r for r in data["results"] if r["status"] == "ok" and r["speedup"]]
    variants = [v for v in data["variants"] if any(r["variant"] == v for r in rows)]
    groups = []
    for r in data["results"]:
        key = (r["length"], r["batch"])
        if key not in groups:
            groups.append(key)
    if not rows or not groups:
        return
    top = max(r["speedup"] for r in rows)
    top = max(1.5, math.ceil(top * 1.1 * 2) / 2)
    bar, gap, left, bottom, height = 14, 22, 60, 70, 360
    width = left + len(groups) * (len(variants) * bar + gap) + 200
    img = Image.new("RGB", (width, height + bottom + 50), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((left, 8), f"{data['recipe']}: speed-up over {data['original_pipeline']} (median of per-round paired wall-time ratios, "
                      f"{data['machine']['threads']} threads, {data['machine']['device']})", fill="black", font=font)

    def y_of(v):
        return 30 + height - int(v / top * height)

    step = 0.5 if top <= 5 else (1 if top <= 12 else 5)
    tick = 0.0
    while tick <= top + 1e-9:
        y = y_of(tick)
        d.line([(left - 4, y), (width - 200, y)], fill=(225, 225, 225))
        d.text((8, y - 6), f"{tick:g}x", fill="black", font=font)
        tick += step
    d.line([(left, y_of(1.0)), (width - 200, y_of(1.0))], fill="black")
    for g, (length, batch) in enumerate(groups):
        x0 = left + g * (len(variants) * bar + gap) + gap // 2
        for i, v in enumerate(variants):
            r = next((r for r in rows if r["variant"] == v and r["length"] == length and r["batch"] == batch), None)
            if r is None:
                continue
            x = x0 + i * bar
            d.rectangle([x, y_of(r["speedup"]), x + bar - 2, y_of(0)], fill=COLORS[i % len(COLORS)])
        d.text((x0, y_of(0) + 6), f"{length}", fill="black", font=font)
        d.text((x0, y_of(0) + 20), f"b{batch}", fill="black", font=font)
    for i, v in enumerate(variants):
        y = 40 + i * 18
        d.rectangle([width - 190, y, width - 178, y + 12], fill=COLORS[i % len(COLORS)])
        d.text((width - 172, y), v, fill="black", font=font)
    img.save(path, format="PNG")
