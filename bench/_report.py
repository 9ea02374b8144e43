"""Ratios, goals, the printed table, the JSON file and the PNG chart."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

# The goals, evaluated on the runs of one `make bench`.
GOAL_VS_SEED = 30.0
GOAL_VS_MLSERVER_ADAPTIVE = 3.0
GOAL_VS_CEILING = 0.60
# p99 of the full stack against the insecure ceiling's p99 in the same run: an absolute
# latency on a shared 2-core machine measures the neighbours as much as the stack.
GOAL_P99_VS_CEILING = 1.5
GOAL_P99_CONNECTIONS = 64
GOAL_BATCH_ROWS_PER_S = 100_000
GOAL_RSS_MB = 600
GOAL_UP_S = 10.0
# More CPU than this used by other processes during a run makes its numbers noise.
NOISY_OTHER_CPU = 20


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _first_line(["nginx", "-v"]),
        "redis": _first_line(["redis-server", "--version"]),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def ratios(runs: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def rps(name: str) -> float | None:
        run = runs.get(name)
        return float(run["rps"]) if run and run.get("rps") else None

    out: dict[str, float | None] = {}
    for mine, other in (
        ("full", "seed"),
        ("full", "ceiling"),
        ("full", "mlserver"),
        ("full", "mlserver-adaptive"),
        ("full-seed-route", "seed"),
        ("full-v2", "mlserver-adaptive"),
        ("regressor", "full"),
        ("pipeline", "full"),
    ):
        a, b = rps(mine), rps(other)
        if a and b:
            out[f"{mine}/{other}"] = round(a / b, 2)
    return out


def goals(
    runs: dict[str, dict[str, Any]], r: dict[str, float | None], connections: int
) -> list[dict[str, Any]]:
    full = runs.get("full")
    res: list[dict[str, Any]] = []

    def goal(name: str, target: str, value: Any, met: bool | None, note: str = "") -> None:
        res.append({"goal": name, "target": target, "measured": value, "met": met, "note": note})

    if full is None:
        return res
    clean = full["non2xx"] == 0 and full["socket_errors"] == 0
    vs_seed = r.get("full/seed")
    goal(
        "full vs seed (requests/s), zero non-2xx",
        f">= {GOAL_VS_SEED:g}x, 0 non-2xx",
        f"{vs_seed}x, {full['non2xx']} non-2xx, {full['socket_errors']} socket errors",
        None if vs_seed is None else (vs_seed >= GOAL_VS_SEED and clean),
    )
    vs_ml = r.get("full/mlserver-adaptive")
    goal(
        "full vs MLServer with adaptive batching",
        f">= {GOAL_VS_MLSERVER_ADAPTIVE:g}x",
        f"{vs_ml}x",
        None if vs_ml is None else vs_ml >= GOAL_VS_MLSERVER_ADAPTIVE,
    )
    vs_ceiling = r.get("full/ceiling")
    goal(
        "full vs insecure ceiling",
        f">= {GOAL_VS_CEILING:.0%}",
        None if vs_ceiling is None else f"{vs_ceiling:.0%}",
        None if vs_ceiling is None else vs_ceiling >= GOAL_VS_CEILING,
    )
    p99 = full["latency_ms"]["p99"]
    ceiling = runs.get("ceiling")
    ceiling_p99 = ceiling["latency_ms"]["p99"] if ceiling else None
    at_64 = connections == GOAL_P99_CONNECTIONS
    against = "" if ceiling_p99 is None else f" ({p99 / ceiling_p99:.2f}x the ceiling's"
    goal(
        f"full p99 at {GOAL_P99_CONNECTIONS} connections",
        f"<= {GOAL_P99_VS_CEILING:g}x the ceiling's p99",
        f"{p99:.1f} ms at {connections} connections"
        + ("" if ceiling_p99 is None else f"{against} {ceiling_p99:.1f} ms)"),
        (p99 <= GOAL_P99_VS_CEILING * ceiling_p99) if at_64 and ceiling_p99 else None,
        ""
        if at_64 and ceiling_p99
        else "not evaluated: " + ("other connection count" if not at_64 else "no ceiling run"),
    )
    batch = {k: v for k, v in runs.items() if k.startswith("batch-")}
    if batch:
        best_name, best = max(batch.items(), key=lambda kv: kv[1]["rows_per_s"])
        all_clean = all(v["non2xx"] == 0 and v["socket_errors"] == 0 for v in batch.values())
        goal(
            "batch endpoint rows/s",
            f">= {GOAL_BATCH_ROWS_PER_S:,}",
            ", ".join(f"{k}: {v['rows_per_s']:,.0f}" for k, v in batch.items()),
            best["rows_per_s"] >= GOAL_BATCH_ROWS_PER_S and all_clean,
            f"best: {best_name}" + ("" if all_clean else "; some batch requests failed"),
        )
    rss = full["usage"]["total_rss_mb_peak"]
    pss = full["usage"]["total_pss_mb_peak"]
    goal(
        "all stack processes together resident",
        f"<= {GOAL_RSS_MB} MB",
        f"{pss:.0f} MB PSS (sum of RSS: {rss:.0f} MB)",
        pss <= GOAL_RSS_MB,
        "PSS counts each resident page once, split among the processes sharing it; the sum "
        "of RSS counts shared libraries once per process",
    )
    up = full.get("stack", {}).get("make_up_to_ready_s")
    goal(
        "`make up` to ready, models built",
        f"<= {GOAL_UP_S:g} s",
        None if up is None else f"{up:.1f} s",
        None if up is None else up <= GOAL_UP_S,
    )
    return res


def table(runs: dict[str, dict[str, Any]], titles: dict[str, str]) -> str:
    head = (
        f"{'target':<32} {'req/s':>9} {'rows/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
        f" {'non-2xx':>8} {'srv CPU%':>9} {'RSS MB':>7} {'wrk CPU%':>8} {'other CPU%':>10}"
    )
    lines = [head, "-" * len(head)]
    for name, run in runs.items():
        lat, use = run["latency_ms"], run["usage"]
        lines.append(
            f"{titles.get(name, name):<32} {run['rps']:>9,.0f} {run['rows_per_s']:>10,.0f}"
            f" {lat['p50']:>8.1f} {lat['p95']:>8.1f} {lat['p99']:>8.1f}"
            f" {run['non2xx'] + run['socket_errors']:>8}"
            f" {use['server_cpu_percent']:>9.0f} {use['total_rss_mb_peak']:>7.0f}"
            f" {use['client_cpu_percent']:>8.0f} {other_cpu(run):>10.0f}"
        )
    noisy = [name for name, run in runs.items() if other_cpu(run) > NOISY_OTHER_CPU]
    if noisy:
        lines.append(
            f"WARNING: other processes on this machine used more than {NOISY_OTHER_CPU}% CPU "
            f"during {', '.join(noisy)}: those numbers are not representative"
        )
    return "\n".join(lines)


def other_cpu(run: dict[str, Any]) -> float:
    """CPU used during a run by processes that are neither the target nor wrk."""
    use = run["usage"]
    return max(
        0.0,
        use["machine_cpu_percent"] - use["server_cpu_percent"] - use["client_cpu_percent"],
    )


def processes_table(run: dict[str, Any]) -> str:
    lines = [f"  {'role':<16} {'procs':>5} {'CPU%':>6} {'RSS MB':>7}"]
    for role, v in sorted(run["usage"]["by_role"].items()):
        lines.append(
            f"  {role:<16} {v['processes']:>5.0f} {v['cpu_percent']:>6.0f} {v['rss_mb_peak']:>7.0f}"
        )
    return "\n".join(lines)


def goals_table(gs: list[dict[str, Any]]) -> str:
    mark = {True: "MET ", False: "MISS", None: "n/a "}
    return "\n".join(
        f"  [{mark[g['met']]}] {g['goal']}: {g['measured']} (goal {g['target']})"
        + (f" — {g['note']}" if g["note"] else "")
        for g in gs
    )


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


def chart(path: Path, doc: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    runs: dict[str, dict[str, Any]] = doc["runs"]
    titles: dict[str, str] = doc["titles"]
    single = [k for k, v in runs.items() if v["rows_per_request"] == 1]
    batch = [k for k, v in runs.items() if v["rows_per_request"] > 1]
    fig, axes = plt.subplots(
        1,
        3 if batch else 2,
        figsize=(16 if batch else 12, 5.2),
        layout="constrained",
        width_ratios=[1.3, 1, 0.8] if batch else [1.3, 1],
    )
    colors = {
        "seed": "#9e9e9e",
        "mlserver": "#f4a261",
        "mlserver-adaptive": "#e76f51",
        "ceiling": "#8ab17d",
        "full": "#264653",
        "full-v2": "#2a6f7f",
        "full-seed-route": "#3d8c9e",
    }
    names = [titles.get(k, k) for k in single]

    ax = axes[0]
    values = [runs[k]["rps"] for k in single]
    bars = ax.barh(names, values, color=[colors.get(k, "#2a9d8f") for k in single])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3)
    ax.set_xlim(0, max(values) * 1.2)
    ax.set_xlabel("requests/s, one row per request")
    ax.invert_yaxis()
    ax.set_title("Throughput")

    ax = axes[1]
    width = 0.27
    ys = range(len(single))
    for i, (p, shade) in enumerate((("p50", 0.45), ("p95", 0.7), ("p99", 1.0))):
        ax.barh(
            [y + (i - 1) * width for y in ys],
            [runs[k]["latency_ms"][p] for k in single],
            height=width,
            label=p,
            color=(0.15, 0.27, 0.33, shade),
        )
    ax.set_yticks(list(ys), [""] * len(names))
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ceiling = runs.get("ceiling")
    if ceiling:
        ax.set_xlabel(
            "latency, ms (log scale); dashed: the p99 goal "
            f"({GOAL_P99_VS_CEILING:g}x the ceiling's)"
        )
        ax.axvline(
            GOAL_P99_VS_CEILING * ceiling["latency_ms"]["p99"],
            color="#e63946",
            linestyle="--",
            linewidth=1,
        )
    else:
        ax.set_xlabel("latency, ms (log scale)")
    ax.legend(loc="lower right")
    ax.invert_yaxis()
    ax.set_title(f"Latency at {doc['client']['connections']} connections")

    if batch:
        ax = axes[2]
        values = [runs[k]["rows_per_s"] for k in batch]
        labels = [f"{runs[k]['rows_per_request']} rows/request" for k in batch]
        bars = ax.bar(labels, values, color="#2a9d8f")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3)
        ax.set_ylim(0, max([*values, GOAL_BATCH_ROWS_PER_S]) * 1.2)
        ax.axhline(GOAL_BATCH_ROWS_PER_S, color="#e63946", linestyle="--", linewidth=1)
        ax.set_ylabel("rows/s")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_title("Batch endpoint (full stack); dashed: goal")

    m = doc["machine"]
    fig.suptitle(
        f"modelgate benchmark — {m['logical_cpus']} CPUs ({m['cpu']}), wrk "
        f"{doc['client']['threads']} threads x {doc['client']['connections']} connections, "
        f"{doc['client']['duration_s']} s per run — {doc['finished']}"
        + (" — NOISY: other processes used the CPU too" if doc.get("noisy_runs") else ""),
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(doc: dict[str, Any]) -> str:
    """The results as a Markdown table (for the README)."""
    runs: dict[str, dict[str, Any]] = doc["runs"]
    titles: dict[str, str] = doc["titles"]
    out = [
        "| target | requests/s | rows/s | p50 ms | p95 ms | p99 ms | non-2xx | server CPU % "
        "| RSS MB | other CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        lat, use = run["latency_ms"], run["usage"]
        out.append(
            f"| {titles.get(name, name)} | {run['rps']:,.0f} | {run['rows_per_s']:,.0f} "
            f"| {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} "
            f"| {run['non2xx'] + run['socket_errors']} | {use['server_cpu_percent']:.0f} "
            f"| {use['total_rss_mb_peak']:.0f} | {other_cpu(run):.0f} |"
        )
    mark = {True: "met", False: "**missed**", None: "n/a"}
    out += ["", "| goal | target | measured | |", "|---|---|---|---|"]
    for g in doc.get("goals", []):
        out.append(f"| {g['goal']} | {g['target']} | {g['measured']} | {mark[g['met']]} |")
    return "\n".join(out)
