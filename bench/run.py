"""`make bench`: the secured stack side by side with the seed app, the insecure
ceiling and Seldon MLServer, one after the other on this machine, with the same
load tool (wrk + bench/predict.lua) and the same client settings.

    make bench                               # everything, writes bench/results/latest.*
    make bench BENCH_ARGS="--only seed,full" # a subset
    .venv/bin/python bench/run.py --help

Prints a table, writes JSON and a PNG chart, and evaluates the goals of the
benchmark issue. Every server it starts, it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _profile
import _report
import _targets
from _procs import BenchError
from _targets import Settings, Target
from _wrk import Client, measure, once

PHASES = ("seed", "mlserver", "mlserver-adaptive", "ceiling", "full")
DEFAULT_PHASES = PHASES


def _phase(name: str, s: Settings) -> AbstractContextManager[Target | list[Target]]:
    if name == "seed":
        return _targets.seed(s)
    if name == "mlserver":
        return _targets.mlserver(s, adaptive=False)
    if name == "mlserver-adaptive":
        return _targets.mlserver(s, adaptive=True)
    if name == "ceiling":
        return _targets.ceiling(s)
    if name == "full":
        return _targets.full_stack(s)
    raise BenchError(f"unknown phase {name}")


def _git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=_targets.ROOT
    )
    return out.stdout.strip() or "?"


def _prepare(s: Settings) -> None:
    """The same defaults the Makefile exports, a stack-free start, and `modelgate init`."""
    root = _targets.ROOT
    for key, value in {
        "MG_ROOT": root,
        "MG_VENV": root / ".venv",
        "MG_VAR_DIR": root / "var",
        "MG_SECRETS_DIR": root / "secrets",
        "MG_CERTS_DIR": root / "certs",
        "MG_MODEL_STORE": root / "model_store",
    }.items():
        os.environ.setdefault(key, str(value))
    # stack.sh tells a running supervisord from an exited one its parent has not reaped.
    running = subprocess.run([root / "deploy" / "stack.sh", "pid"], stdout=subprocess.DEVNULL)
    if running.returncode == 0:
        raise BenchError(
            "a stack is already running from this folder; stop it (make down): the benchmark "
            "starts its own stack with the benchmark profile, and the ceiling uses its ports"
        )
    # Certificates, secrets and the demo models, so that no timed start builds them.
    subprocess.run([s.bin("modelgate"), "init"], check=True, stdout=subprocess.DEVNULL)


def _profile_run(client: Client, target: Target) -> dict[str, Any]:
    """An extra, unscored load run with py-spy sampling every Python worker."""
    stack = ("full", "batch-100", "batch-1000", "regressor", "pipeline")
    roles = ("inference",) if target.name in stack else (target.name,)
    pids = _profile.python_workers(target.roots, roles)
    folder = _targets.WORK / "profile" / target.name
    for old in folder.glob("*.txt"):
        old.unlink()
    spies = _profile.start(
        _targets.MLSERVER_VENV / "bin" / "py-spy", pids, client.duration_s, folder
    )
    once(client, target.load, client.duration_s + 1, target.roots)
    for spy in spies:
        spy.wait(60)
    summary = _profile.summarize(sorted(folder.glob("*.txt")))
    summary["workers"] = pids
    print(f"[bench] profile of {target.name} ({', '.join(roles)} workers):")
    print(_profile.render(summary))
    return summary


def run(
    phases: list[str],
    client: Client,
    out: Path,
    s: Settings,
    strict: bool = False,
    profile: frozenset[str] = frozenset(),
) -> int:
    started = datetime.now(UTC)
    doc: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "machine": _report.machine(),
        "client": client.as_dict(),
        "runs": {},
        "titles": {},
        "targets": {},
    }
    runs: dict[str, dict[str, Any]] = doc["runs"]
    log: Callable[[str], None] = lambda msg: print(f"[bench] {msg}", flush=True)  # noqa: E731
    log(
        f"wrk {client.threads} threads, {client.connections} connections, "
        f"{client.warmup_s} s warm-up + {client.duration_s} s per run; "
        f"load average {doc['machine']['load_average_at_start']}"
    )
    for phase in phases:
        t0 = time.monotonic()
        log(f"{phase}: starting")
        with _phase(phase, s) as started_targets:
            targets = started_targets if isinstance(started_targets, list) else [started_targets]
            for target in targets:
                log(f"{target.name}: {target.load.url} ({target.load.rows} rows/request)")
                result = measure(client, target.load, target.roots)
                result.update(target.info.pop("result", {}))
                runs[target.name] = result
                if target.name in profile:
                    doc.setdefault("profiles", {})[target.name] = _profile_run(client, target)
                doc["titles"][target.name] = target.title
                doc["targets"][target.name] = target.info
                log(
                    f"{target.name}: {result['rps']:,.0f} req/s, "
                    f"p99 {result['latency_ms']['p99']:.1f} ms, "
                    f"{result['non2xx']} non-2xx, {result['socket_errors']} socket errors"
                )
        log(f"{phase}: done in {time.monotonic() - t0:.0f} s")
    doc["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    for name, target_info in doc["targets"].items():
        stack = target_info.get("stack")
        if stack:
            runs[name]["stack"] = stack
    doc["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["noisy_runs"] = [
        k for k, v in runs.items() if _report.other_cpu(v) > _report.NOISY_OTHER_CPU
    ]
    doc["ratios"] = _report.ratios(runs)
    doc["goals"] = _report.goals(runs, doc["ratios"], client.connections)

    print()
    print(_report.table(runs, doc["titles"]))
    for name in ("full", "ceiling"):
        if name in runs:
            print(f"\nprocesses during '{name}':")
            print(_report.processes_table(runs[name]))
    shown = [f"{k} = {v}x" for k, v in doc["ratios"].items() if v]
    if shown:
        print("\nratios: " + ", ".join(shown))
    if doc["goals"]:
        print("goals:")
        print(_report.goals_table(doc["goals"]))
    _report.write_json(out / "latest.json", doc)
    _report.chart(out / "latest.png", doc)
    print(f"\nwrote {out / 'latest.json'} and {out / 'latest.png'}")
    failed = [k for k, v in runs.items() if v["non2xx"] or v["socket_errors"]]
    if failed and strict:
        print(f"[bench] failed: non-2xx responses or socket errors in {', '.join(failed)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_PHASES),
        help=f"comma list of phases: {', '.join(PHASES)}",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5, help="seconds of warm-up per run")
    parser.add_argument("--duration", type=int, default=20, help="seconds measured per run")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="short runs (1 s warm-up, 3 s, 16 connections) into bench/.work/smoke; "
        "fails on any non-2xx response",
    )
    parser.add_argument("--users", type=int, default=None, help="distinct users (default 100)")
    parser.add_argument(
        "--profile",
        default="",
        help="comma list of targets (full, ceiling, batch-1000, ...) to profile with py-spy "
        "in an extra, unscored run",
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        metavar="JSON",
        help="print the results in JSON (e.g. bench/results/latest.json) as Markdown; runs nothing",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(_report.markdown(json.loads(args.markdown.read_text())))
        return 0
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(unknown)}")
    if args.smoke:
        client = Client(threads=1, connections=16, warmup_s=1, duration_s=3)
        out = args.out or _targets.WORK / "smoke"
    else:
        client = Client(args.threads, args.connections, args.warmup, args.duration)
        out = args.out or _targets.BENCH / "results"
    try:
        s = Settings()
        if args.users:
            s.users = args.users
        _prepare(s)
        profile = frozenset(p.strip() for p in args.profile.split(",") if p.strip())
        return run(phases, client, out, s, strict=args.smoke, profile=profile)
    except BenchError as exc:
        print(f"[bench] failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
