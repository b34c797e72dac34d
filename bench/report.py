#!/usr/bin/env python3
"""Turns compare-etcd.sh's results into a table (stdout, markdown) and a plot (SVG).

Usage: bench/report.py OUT_DIR   (reads etcd.jsonl, shoal.jsonl, *.usage; writes
comparison.md and throughput.svg). Standard library only.
"""
import json
import sys
from pathlib import Path


def load(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def usage(path):
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    peak_rss_mib = max(int(rss) for rss, _ in rows) / 1024
    cpu_seconds = sum(float(cpu) for _, cpu in rows)
    return peak_rss_mib, cpu_seconds


def table(etcd, shoal, etcd_usage, shoal_usage):
    lines = [
        "| workload | etcd ops/s | Shoal ops/s | ratio | etcd p99 ms | Shoal p99 ms | errors (etcd/Shoal) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e, s in zip(etcd, shoal):
        ratio = s["ops_per_second"] / e["ops_per_second"] if e["ops_per_second"] else float("nan")
        lines.append(
            f"| {e['label']} | {e['ops_per_second']:,.0f} | {s['ops_per_second']:,.0f} | {ratio:.2f}x "
            f"| {e['latency_ms']['p99']:.2f} | {s['latency_ms']['p99']:.2f} | {e['errors']}/{s['errors']} |"
        )
    lines.append("")
    lines.append("| server (3 processes) | peak RSS of one member, MiB | CPU seconds, all members |")
    lines.append("|---|---:|---:|")
    lines.append(f"| etcd | {etcd_usage[0]:.0f} | {etcd_usage[1]:.1f} |")
    lines.append(f"| Shoal | {shoal_usage[0]:.0f} | {shoal_usage[1]:.1f} |")
    return "\n".join(lines)


def svg_plot(etcd, shoal):
    """Grouped bars: ops/s per workload, etcd and Shoal side by side."""
    width, height = 900, 420
    left, bottom, top = 80, 140, 40
    plot_w, plot_h = width - left - 20, height - bottom - top
    peak = max([r["ops_per_second"] for r in etcd + shoal] + [1])
    n = len(etcd)
    group = plot_w / max(n, 1)
    bar = group * 0.35
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">Throughput, 3 members on one machine (higher is better)</text>',
    ]
    for step in range(6):
        value = peak * step / 5
        y = top + plot_h - plot_h * step / 5
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:,.0f}</text>')
    for i, (e, s) in enumerate(zip(etcd, shoal)):
        x0 = left + i * group + group * 0.15
        for j, (row, colour) in enumerate(((e, "#7f8c8d"), (s, "#2e86de"))):
            h = plot_h * row["ops_per_second"] / peak
            x = x0 + j * bar
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}"/>')
        label_x = left + i * group + group / 2
        label_y = top + plot_h + 14
        parts.append(
            f'<text x="{label_x:.1f}" y="{label_y:.1f}" text-anchor="end" '
            f'transform="rotate(-35 {label_x:.1f} {label_y:.1f})">{e["label"]}</text>'
        )
    parts.append(f'<rect x="{width - 180}" y="40" width="12" height="12" fill="#7f8c8d"/><text x="{width - 162}" y="50">etcd</text>')
    parts.append(f'<rect x="{width - 110}" y="40" width="12" height="12" fill="#2e86de"/><text x="{width - 92}" y="50">Shoal</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def main():
    out = Path(sys.argv[1])
    etcd, shoal = load(out / "etcd.jsonl"), load(out / "shoal.jsonl")
    report = table(etcd, shoal, usage(out / "etcd.usage"), usage(out / "shoal.usage"))
    (out / "comparison.md").write_text(report + "\n")
    (out / "throughput.svg").write_text(svg_plot(etcd, shoal))
    print(report)
    print(f"\nwritten: {out / 'comparison.md'}, {out / 'throughput.svg'}")


if __name__ == "__main__":
    main()
