"""The worked examples of docs/serve-your-own-model.md run against the live stack
exactly as written: the training scripts, then the shell commands (register, load,
predict). Native only: they write the stack's model store (removed afterwards)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "serve-your-own-model.md"
MODELS = ("diabetes", "shop", "cancer-xgb", "diabetes-lgbm")

pytestmark = [pytest.mark.native, pytest.mark.slow]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_examples_run(base_url: str, fresh_source_ip: Callable[[], str]) -> None:
    store = Path(os.environ.get("MG_MODEL_STORE", ROOT / "model_store"))
    venv = Path(os.environ.get("MG_VENV", ROOT / ".venv"))
    taken = [name for name in MODELS if (store / name).exists()]
    assert not taken, f"the store already holds {taken}: the examples would add versions"
    env = {
        **os.environ,
        "BASE": base_url,
        "MG_ROOT": str(ROOT),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    try:
        for script in blocks("python"):
            done = subprocess.run(
                [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        # each answer on a line of its own (curl prints no newline); commands unchanged
        # curl signs in from a loopback address of its own: the per-address sign-in limit
        # is spent by other tests' sign-ins from 127.0.0.1.
        source = fresh_source_ip()
        script = f'set -euo pipefail\ncurl() {{ command curl --interface {source} "$@"; echo; }}\n'
        script += "\n".join(blocks("sh"))
        done = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        out = done.stdout
        for name in MODELS:
            assert f"registered {name} version 1" in out
            assert f"serving {name} version 1" in out
        assert "runtime: onnxruntime: the float32 ONNX graph reproduces XGBClassifier" in out
        assert "runtime: lightgbm: no exact ONNX graph" in out
        answers = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(answers) == 4, out
        diabetes, shop_v1, shop_v2, lgbm = answers
        assert diabetes["model"] == "diabetes" and isinstance(diabetes["predictions"][0], float)
        assert shop_v1["predictions"] == [1, 0]  # the unknown size "XXL" is accepted
        assert shop_v2["outputs"][0]["data"] == [1]
        version = lgbm["versions"][0]
        assert version["task"] == "regression" and version["runtime"] == "lightgbm"
    finally:
        shutil.rmtree(ROOT / "own-model", ignore_errors=True)
        for name in MODELS:
            shutil.rmtree(store / name, ignore_errors=True)
