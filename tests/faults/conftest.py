"""Fixtures of the fault suite.

Every test here is marked ``faults`` and ``native`` (it signals processes of the
native stack) and runs after all other tests; each leaves the stack running and
ready, which ``stack_ready_after`` checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.faults._traffic import Call, Gunicorn, Traffic

if TYPE_CHECKING:
    from tests.conftest import NativeStack


@pytest.fixture
def traffic(base_url: str, ca_file: str) -> Callable[..., Traffic]:
    def start(calls: list[Call], **options: Any) -> Traffic:
        return Traffic(base_url, ca_file, calls, **options)

    return start


@pytest.fixture
def gunicorn(native_stack: NativeStack) -> Callable[[str], Gunicorn]:
    return lambda service: Gunicorn(native_stack, service)


@pytest.fixture(autouse=True)
def stack_ready_after(native_stack: NativeStack) -> Iterator[None]:
    """Whatever a fault test did, the stack is whole and ready for the next test."""
    yield
    for line in native_stack.ctl("status", check=False).splitlines():
        program, _, state = line.partition(" ")
        if program in native_stack.PROGRAMS and not state.strip().startswith("RUNNING"):
            native_stack.start(program)
    native_stack.wait_ready(60)
