"""deploy/stack.sh's view of supervisord: a process that exited is stopped, whether or
not its parent has reaped it. The test process plays the parent that never reaps (PID 1
in most CI containers): the stand-in for supervisord stays a zombie until the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK_SH = ROOT / "deploy" / "stack.sh"


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def _stack_sh(var_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MG_ROOT": str(ROOT),
        "MG_VAR_DIR": str(var_dir),
        "MG_VENV": "/nonexistent",
    }
    # Bounded far above the answer's few tenths of a second, below the script's own 60 s.
    return subprocess.run(
        [str(STACK_SH), *args], env=env, capture_output=True, text=True, timeout=45
    )


def _fake_supervisord(var_dir: Path) -> subprocess.Popen[bytes]:
    """A process that lives until SIGTERM, named in supervisord's pid file; the caller
    does not wait for it until the test ends, so once it exits it is a zombie."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (var_dir / "run").mkdir(parents=True)
    (var_dir / "run" / "supervisord.pid").write_text(f"{proc.pid}\n")
    return proc


def test_down_stops_a_process_whose_parent_does_not_reap_it(tmp_path: Path) -> None:
    proc = _fake_supervisord(tmp_path)
    try:
        assert _stack_sh(tmp_path, "pid").stdout.strip() == str(proc.pid)
        done = _stack_sh(tmp_path, "down")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip() == "stack stopped"
        # The process has exited and nobody reaped it: the case kill -0 cannot tell.
        assert _state(proc.pid) == "Z"
        os.kill(proc.pid, 0)  # a zombie still "exists" for kill -0
        not_running = _stack_sh(tmp_path, "pid")
        assert not_running.returncode == 1 and not_running.stdout == ""
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGTERM


def test_with_stack_refuses_while_a_stack_runs(tmp_path: Path) -> None:
    proc = _fake_supervisord(tmp_path)
    try:
        env = {**os.environ, "MG_ROOT": str(ROOT), "MG_VAR_DIR": str(tmp_path)}
        done = subprocess.run(
            [str(ROOT / "deploy" / "with-stack.sh"), "true"],
            env={**env, "MG_VENV": "/nonexistent"},
            capture_output=True,
            text=True,
            timeout=45,
        )
        assert done.returncode == 1
        assert "a stack is already running" in done.stderr
        assert _state(proc.pid) in {"S", "R"}  # untouched
    finally:
        proc.kill()
        proc.wait()


def test_with_stack_ignores_a_zombie_pid_file(tmp_path: Path) -> None:
    """A stale pid file naming an exited, unreaped process is no running stack: `pid`
    says so, which is what with-stack.sh and `make up` decide by."""
    proc = _fake_supervisord(tmp_path)
    try:
        proc.terminate()
        while _state(proc.pid) != "Z":
            time.sleep(0.01)
        done = _stack_sh(tmp_path, "pid")
        assert done.returncode == 1 and done.stdout == ""
    finally:
        proc.wait()
