"""Plot bench/peers.py's results: medians with min-max bars, restore and backup side by side.

    .cache/bench-venv/bin/python bench/peers_plot.py bench/results/peers-scale20.json out.png

Run by bench/peers.py with the bench virtualenv's Python (matplotlib is not one of the application's packages).
"""
from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source: str, dest: str) -> None:
    data = json.loads(open(source).read())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "restore_s", "restore to a promoted server"),
                           (axes[1], "backup_s", "base backup")):
        names = list(data[key])
        med = [data[key][n]["median"] for n in names]
        low = [m - data[key][n]["min"] for n, m in zip(names, med, strict=True)]
        high = [data[key][n]["max"] - m for n, m in zip(names, med, strict=True)]
        colors = ["#d62728" if n == "pitrsite" else "#7f7f7f" for n in names]
        ax.bar(names, med, yerr=[low, high], capsize=5, color=colors)
        for i, m in enumerate(med):
            ax.text(i, m, f" {m:.2f} s", ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("seconds (median, min-max)")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"pgbench scale {data['scale']}, {data['wal_bytes_replayed'] / 2**20:.0f} MiB WAL, "
                 f"{data['rounds']} rotated cold-cache rounds")
    fig.tight_layout()
    fig.savefig(dest, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
