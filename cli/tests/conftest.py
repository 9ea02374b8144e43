"""CLI tests that need the auth service's test helpers: the throwaway PostgreSQL cluster
(pg_testlib) and the in-process auth settings (auth_testlib) live with the auth tests."""

from __future__ import annotations

import sys
from pathlib import Path

_AUTH_TESTS = str(Path(__file__).resolve().parents[2] / "services" / "auth" / "tests")
if _AUTH_TESTS not in sys.path:
    sys.path.append(_AUTH_TESTS)

from pg_testlib import postgres  # noqa: E402, F401 (the session fixture)
