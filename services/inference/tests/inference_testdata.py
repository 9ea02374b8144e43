"""Data and helper types shared by the inference unit tests."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

IRIS_SAMPLES = [
    # (row, class) known iris flowers: setosa, versicolor, virginica
    ({"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}, 0),
    ({"sepal_length": 6.4, "sepal_width": 3.2, "petal_length": 4.5, "petal_width": 1.5}, 1),
    ({"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}, 2),
]
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]

Serve = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


class Audit:
    """The audit file the service writes, read back as JSON lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def raw(self) -> str:
        return self.path.read_text() if self.path.exists() else ""
