"""Where the server's CPU goes: py-spy attached to every Python worker of a
target during an extra load run (never during a scored one)."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from _procs import label_of

_LINE = re.compile(r":\d+\)$")


def python_workers(roots: list[int], roles: tuple[str, ...]) -> list[int]:
    """Worker processes (not gunicorn masters) of the given roles under the roots."""
    found = []
    for root in roots:
        try:
            procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                if label_of(proc) in roles and not proc.children():
                    found.append(proc.pid)
            except psutil.NoSuchProcess:
                continue
    return found


def start(
    py_spy: Path, pids: list[int], seconds: int, folder: Path
) -> list[subprocess.Popen[bytes]]:
    folder.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(folder / f"{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]


def _frame(frame: str) -> str:
    return _LINE.sub(")", frame.strip())


def summarize(files: list[Path], top: int = 40) -> dict[str, Any]:
    """Self and inclusive sample shares per function, summed over the workers."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_frame(f) for f in stack.split(";")]
            total += n
            own[frames[-1]] += n
            for f in set(frames):
                incl[f] += n

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": f, "percent": round(n / total * 100, 1)}
            for f, n in counter.most_common(top)
        ]

    return {"samples": total, "self": share(own), "inclusive": share(incl)}


def render(summary: dict[str, Any], limit: int = 15) -> str:
    lines = [f"  {summary['samples']} samples (on CPU) over the workers"]
    lines.append("  self time:")
    lines += [f"    {e['percent']:5.1f}%  {e['function']}" for e in summary["self"][:limit]]
    lines.append("  inclusive time (below the server's common trunk):")
    trunk = summary["inclusive"][0]["percent"] if summary["inclusive"] else 0
    branch = [e for e in summary["inclusive"] if e["percent"] < trunk * 0.9]
    lines += [f"    {e['percent']:5.1f}%  {e['function']}" for e in branch[:limit]]
    return "\n".join(lines)
