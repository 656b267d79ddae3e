#!/usr/bin/env python3
"""Plots RSS samples (CSV: seconds,server,rss_kib) as an SVG line chart,
one line per server, with the bursts marked; prints the flatness figures.

    plot_rss.py SAMPLES.csv OUT.svg BURST_EVERY WARMUP

After each burst (at k * BURST_EVERY), "after" is the median over the
last quarter of that interval, when the burst is long over. Two levels
to compare them with:
  - before: the median RSS over [WARMUP, BURST_EVERY), steady load only,
    before the first burst;
  - warmed-up baseline: the level after the first burst. The warm-up is
    one whole cycle of the load, burst included: a burst touches memory
    the steady load has allocated but not yet used, and raises the
    allocator's own metadata once to its peak, neither of which is a creep.
Prints, per server (tab-separated): before, the warmed-up baseline, the
worst later after-burst level as a ratio to it, the worst after-burst level
as a ratio to before, the peak, and every after-burst level as a ratio to
the warmed-up baseline.
"""
import csv
import statistics
import sys
from collections import defaultdict


def main():
    samples_path, out_path, every, warmup = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    series = defaultdict(list)
    with open(samples_path) as f:
        for row in csv.reader(f):
            if len(row) == 3:
                series[row[1]].append((float(row[0]), int(row[2]) / 1024))
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    width, height, pad = 900, 420, 60
    t_max = max(t for s in series.values() for t, _ in s)
    r_max = max(r for s in series.values() for _, r in s) * 1.1
    x = lambda t: pad + (width - 2 * pad) * t / t_max
    y = lambda r: height - pad - (height - 2 * pad) * r / r_max
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">Anonymous RSS during the soak (bursts of concurrent streams every {every:.0f} s, dashed)</text>']
    burst = every
    while burst < t_max:
        parts.append(f'<line x1="{x(burst):.1f}" y1="{pad}" x2="{x(burst):.1f}" y2="{height - pad}" stroke="#aaa" stroke-dasharray="4,4"/>')
        burst += every
    for i in range(6):
        r = r_max * i / 5
        parts.append(f'<line x1="{pad}" y1="{y(r):.1f}" x2="{width - pad}" y2="{y(r):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{pad - 6}" y="{y(r) + 4:.1f}" text-anchor="end">{r:.0f}</text>')
    for i in range(11):
        t = t_max * i / 10
        parts.append(f'<text x="{x(t):.1f}" y="{height - pad + 16}" text-anchor="middle">{t:.0f}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">seconds</text>')
    parts.append(f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle">RSS (MiB)</text>')
    report = []
    for i, (server, points) in enumerate(sorted(series.items())):
        colour = colours[i % len(colours)]
        path = " ".join(f"{x(t):.1f},{y(r):.1f}" for t, r in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        parts.append(f'<text x="{width - pad - 120}" y="{pad + 16 * i}" fill="{colour}">{server}</text>')
        base = [r for t, r in points if warmup <= t < every]
        before = statistics.median(base) if base else float("nan")
        levels = []
        k = 1
        while (k + 1) * every <= t_max + 1:
            window = [r for t, r in points if (k + 0.75) * every <= t < (k + 1) * every]
            if window:
                levels.append(statistics.median(window))
            k += 1
        peak = max(r for _, r in points)
        report.append((server, before, levels, peak))
    parts.append("</svg>")
    with open(out_path, "w") as f:
        f.write("\n".join(parts))
    nan = float("nan")
    for server, before, levels, peak in report:
        warmed = levels[0] if levels else nan
        later = max(levels[1:]) / warmed if len(levels) > 1 else nan
        worst_before = max(levels) / before if levels else nan
        ratios = " ".join(f"{r / warmed:.3f}" for r in levels)
        print(f"{server}\t{before:.1f}\t{warmed:.1f}\t{later:.3f}\t{worst_before:.3f}\t{peak:.1f}\t{ratios}")


main()
