"""The servers `make bench` measures, each started and stopped by the benchmark.

Each target is a context manager yielding a ``Target``: where to send load, in
which body format, and the process ids whose CPU and memory count.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _procs import Background, BenchError, require_free, wait_http
from _wrk import Load

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
MLSERVER_VENV = WORK / "mlserver-venv"


@dataclass
class Settings:
    """Where things live and listen; every value comes from the environment."""

    venv: Path = field(default_factory=lambda: Path(os.environ.get("MG_VENV", ROOT / ".venv")))
    port_base: int = field(default_factory=lambda: int(os.environ.get("BENCH_PORT_BASE", "8200")))
    https_port: int = field(default_factory=lambda: int(os.environ.get("MG_HTTPS_PORT", "8443")))
    certs: Path = field(
        default_factory=lambda: Path(os.environ.get("MG_CERTS_DIR", ROOT / "certs"))
    )
    secrets: Path = field(
        default_factory=lambda: Path(os.environ.get("MG_SECRETS_DIR", ROOT / "secrets"))
    )
    model_store: Path = field(
        default_factory=lambda: Path(os.environ.get("MG_MODEL_STORE", ROOT / "model_store"))
    )
    model: str = field(default_factory=lambda: os.environ.get("BENCH_MODEL", "iris"))
    users: int = field(default_factory=lambda: int(os.environ.get("BENCH_USERS", "100")))

    @property
    def seed_port(self) -> int:
        return self.port_base

    @property
    def mlserver_port(self) -> int:  # +1 gRPC, +2 metrics
        return self.port_base + 10

    @property
    def ceiling_port(self) -> int:
        return self.port_base + 20

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


@dataclass
class Target:
    name: str
    title: str
    load: Load
    roots: list[int]
    info: dict[str, Any] = field(default_factory=dict)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


@contextmanager
def seed(s: Settings) -> Iterator[Target]:
    """The tutorial's app: one uvicorn process, plain HTTP."""
    port = s.seed_port
    require_free(port)
    server = Background(
        "seed",
        [
            s.bin("uvicorn"),
            "seed_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=BENCH,
        env=_env(),
        log=WORK / "log" / "seed.log",
    )
    try:
        # The seed answers only POST /predict; FastAPI's /docs tells us it is up.
        wait_http(f"http://127.0.0.1:{port}/docs", timeout=60, alive=server.alive)
        yield Target(
            "seed",
            "seed app (tutorial)",
            Load(f"http://127.0.0.1:{port}/predict", "seed"),
            [server.pid],
            {"endpoint": "POST /predict", "transport": "HTTP", "workers": 1},
        )
    finally:
        server.stop()


def model_artifact(s: Settings) -> Path | None:
    """The stack's own joblib artifact of the model, newest version, if built."""
    folder = s.model_store / s.model
    versions = sorted(
        (p for p in folder.glob("*") if p.name.isdigit() and (p / "model.joblib").is_file()),
        key=lambda p: int(p.name),
    )
    return versions[-1] / "model.joblib" if versions else None


def _mlserver_model(s: Settings, target: Path) -> str:
    artifact = model_artifact(s)
    if artifact is not None:
        shutil.copyfile(artifact, target)
        return f"modelgate model store: {artifact.relative_to(s.model_store)}"
    # No stack model (yet): train the same kind of model the stack's demo build does.
    code = (
        "import joblib, sys\n"
        "from sklearn.datasets import load_iris\n"
        "from sklearn.ensemble import RandomForestClassifier\n"
        "X, y = load_iris(return_X_y=True)\n"
        "joblib.dump(RandomForestClassifier(n_estimators=100, random_state=0).fit(X, y),"
        " sys.argv[1])\n"
    )
    subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-c", code, str(target)], check=True)
    return "trained by the benchmark (RandomForestClassifier, 100 trees, iris)"


@contextmanager
def mlserver(s: Settings, *, adaptive: bool) -> Iterator[Target]:
    """Seldon MLServer with its scikit-learn runtime, v2 REST, plain HTTP.

    As shipped: default settings (one inference worker process, debug access
    log on). Adaptive: the same plus adaptive batching (max 32 requests, 5 ms).
    """
    if not (MLSERVER_VENV / "bin" / "mlserver").is_file():
        raise BenchError("MLServer's virtualenv is missing: run `make bench` (it installs it)")
    name = "mlserver-adaptive" if adaptive else "mlserver"
    home = WORK / name
    shutil.rmtree(home, ignore_errors=True)
    (home / s.model).mkdir(parents=True)
    source = _mlserver_model(s, home / s.model / "model.joblib")
    port = s.mlserver_port
    require_free(port, port + 1, port + 2)
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": port + 1}
    settings["metrics_port"] = port + 2
    (home / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings: dict[str, Any] = {
        "name": s.model,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }
    if adaptive:
        model_settings.update(max_batch_size=32, max_batch_time=0.005)
    (home / s.model / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    server = Background(
        name,
        [str(MLSERVER_VENV / "bin" / "mlserver"), "start", "."],
        cwd=home,
        env=_env(),
        log=WORK / "log" / f"{name}.log",
    )
    try:
        ready = wait_http(
            f"http://127.0.0.1:{port}/v2/models/{s.model}/ready", timeout=120, alive=server.alive
        )
        version = ", ".join(
            p.name.removesuffix(".dist-info")
            for p in sorted(MLSERVER_VENV.glob("lib/python*/site-packages/mlserver*.dist-info"))
        )
        yield Target(
            name,
            "MLServer + adaptive batching" if adaptive else "MLServer (as shipped)",
            Load(f"http://127.0.0.1:{port}/v2/models/{s.model}/infer", "v2"),
            [server.pid],
            {
                "endpoint": f"POST /v2/models/{s.model}/infer",
                "transport": "HTTP",
                "version": version,
                "model": source,
                "adaptive_batching": {"max_batch_size": 32, "max_batch_time_s": 0.005}
                if adaptive
                else None,
                "start_to_ready_s": round(ready, 2),
            },
        )
    except BenchError:
        sys.stderr.write(server.tail() + "\n")
        raise
    finally:
        server.stop()


def profile_env() -> dict[str, str]:
    """The benchmark profile (bench/profile.env) as a dict."""
    values: dict[str, str] = {}
    for line in (BENCH / "profile.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]  # quoted as the shell that sources the file reads it
            values[key.strip()] = value
    return values


def tls_context(s: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(s.certs / "ca.pem"))


@contextmanager
def ceiling(s: Settings) -> Iterator[Target]:
    """The stack's runtime without any security, behind the stack's nginx config.

    nginx is rendered from the same template with the same benchmark profile
    into its own runtime folder, its inference upstream pointed at the ceiling
    app; the ceiling app runs under the stack's gunicorn configuration.
    """
    var = WORK / "ceiling-var"
    shutil.rmtree(var / "nginx", ignore_errors=True)
    (var / "log").mkdir(parents=True, exist_ok=True)
    port = s.ceiling_port
    require_free(port, s.https_port)
    env = _env(
        **profile_env(),
        MG_VAR_DIR=str(var),
        MG_INFERENCE_UPSTREAM=f"127.0.0.1:{port}",
        MG_SERVICE="ceiling",
        MG_CEILING_PORT=str(port),
    )
    subprocess.run(
        [s.bin("modelgate"), "render-nginx"], env=env, check=True, stdout=subprocess.DEVNULL
    )
    app = Background(
        "ceiling",
        [s.bin("gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
         "--pythonpath", str(BENCH), "ceiling_app:create_app()"],
        cwd=ROOT,
        env=env,
        log=WORK / "log" / "ceiling.log",
    )  # fmt: skip
    nginx: Background | None = None
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=60, alive=app.alive)
        nginx = Background(
            "ceiling-nginx",
            ["nginx", "-p", str(var / "nginx"), "-c", str(var / "nginx" / "nginx.conf"),
             "-g", "daemon off;"],
            cwd=ROOT,
            env=env,
            log=WORK / "log" / "ceiling-nginx.log",
        )  # fmt: skip
        wait_http(
            f"https://127.0.0.1:{s.https_port}/v2/health/ready",
            timeout=30,
            verify=tls_context(s),
            alive=nginx.alive,
        )
        yield Target(
            "ceiling",
            "insecure ceiling (same runtime)",
            Load(f"https://127.0.0.1:{s.https_port}/v1/models/{s.model}/predict", "v1"),
            [app.pid, nginx.pid],
            {
                "endpoint": f"POST /v1/models/{s.model}/predict",
                "transport": "HTTPS via nginx",
                "workers": int(os.environ.get("MG_WORKERS", "2")),
            },
        )
    except BenchError:
        sys.stderr.write(app.tail() + "\n" + (nginx.tail() if nginx else "") + "\n")
        raise
    finally:
        if nginx is not None:
            nginx.stop()
        app.stop()


# --- the full stack ---------------------------------------------------------------------------

BENCH_USER_PREFIX = "bench-user-"
# A loopback source address per few logins keeps every address under the
# default login limit (5/minute per client address), whatever the profile says.
LOGINS_PER_ADDRESS = 4


def _make(target: str, log: Path) -> float:
    """Run `make TARGET` from the project root; returns its wall time."""
    start = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.run(
            ["make", "--no-print-directory", target], cwd=ROOT, stdout=out, stderr=out
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BenchError(f"make {target} failed:\n{tail}")
    return time.monotonic() - start


def _supervisord_pid() -> int:
    pidfile = Path(os.environ["MG_VAR_DIR"]) / "run" / "supervisord.pid"
    return int(pidfile.read_text().strip())


class Users:
    """Benchmark users made through the admin API, and their access tokens."""

    def __init__(self, s: Settings, count: int) -> None:
        self.s = s
        self.count = count
        self.base = f"https://127.0.0.1:{s.https_port}"
        self.tls = tls_context(s)
        self.names = [f"{BENCH_USER_PREFIX}{i:04d}" for i in range(count)]
        self._address = 0

    def _client(self) -> httpx.Client:
        """A client whose connections come from the next loopback address."""
        self._address += 1
        a, b = divmod(self._address, 250)
        transport = httpx.HTTPTransport(verify=self.tls, local_address=f"127.0.{10 + a}.{b + 1}")
        return httpx.Client(base_url=self.base, transport=transport, timeout=30)

    def _login(self, client: httpx.Client, username: str, password: str) -> str:
        r = client.post("/auth/token", data={"username": username, "password": password})
        if r.status_code != 200:
            raise BenchError(f"login of {username} answered {r.status_code}: {r.text[:200]}")
        token: str = r.json()["access_token"]
        return token

    def admin_token(self) -> str:
        password = (self.s.secrets / "admin_password").read_text().strip()
        with self._client() as client:
            return self._login(client, "admin", password)

    def create(self, admin: str) -> dict[str, str]:
        """Create (or reset) every benchmark user; returns name -> password."""
        headers = {"Authorization": f"Bearer {admin}"}
        passwords: dict[str, str] = {}

        def one(name: str) -> None:
            password = secrets.token_urlsafe(18)
            with httpx.Client(base_url=self.base, verify=self.tls, timeout=30) as client:
                r = client.post(
                    "/auth/users",
                    json={"username": name, "password": password, "role": "user"},
                    headers=headers,
                )
                if r.status_code == 409:  # left by an interrupted run: reset its password
                    r = client.patch(
                        f"/auth/users/{name}", json={"password": password}, headers=headers
                    )
                if r.status_code not in (200, 201):
                    raise BenchError(f"creating {name} answered {r.status_code}: {r.text[:200]}")
            passwords[name] = password

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, self.names))
        return passwords

    def tokens(self, passwords: dict[str, str]) -> list[str]:
        names = list(passwords)
        groups = [
            names[i : i + LOGINS_PER_ADDRESS] for i in range(0, len(names), LOGINS_PER_ADDRESS)
        ]
        clients = [self._client() for _ in groups]

        def login_group(k: int) -> list[str]:
            with clients[k] as client:
                return [self._login(client, n, passwords[n]) for n in groups[k]]

        with ThreadPoolExecutor(4) as pool:
            return [t for group in pool.map(login_group, range(len(groups))) for t in group]

    def remove(self, admin: str) -> None:
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=self.base, verify=self.tls, timeout=30) as client:
            for name in self.names:
                client.delete(f"/auth/users/{name}", headers=headers)


# Models data scientists bring, registered with the operator's command before the stack
# starts (so it serves them) and removed after: their cost per request beside iris's.
OWN_MODELS = {"regressor": "bench-regressor", "pipeline": "bench-pipeline"}
OWN_BODIES = 256


def _own_model_tables() -> dict[str, tuple[Any, Any, str]]:
    """kind: (unfitted estimator, training table, target column)."""
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(3)
    rows = 800
    shop = pd.DataFrame(
        {
            "colour": rng.choice(["red", "green", "blue"], rows),
            "size": rng.choice(["S", "M", "L", "XL"], rows),
            "weight": rng.uniform(1.0, 50.0, rows).round(2),
            "age": rng.integers(18, 80, rows).astype(float),
        }
    )
    score = (shop.colour == "red") * 1.5 + (shop.weight - 25) / 10 - (shop.age - 50) / 30
    shop["bought"] = (score + rng.normal(0, 0.5, rows) > 0).astype(int)
    pipeline = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("categories", OneHotEncoder(handle_unknown="ignore"), ["colour", "size"]),
                        ("numbers", StandardScaler(), ["weight", "age"]),
                    ]
                ),
            ),
            ("classify", LogisticRegression(solver="liblinear")),
        ]
    )
    forest = RandomForestRegressor(n_estimators=100, random_state=0)
    return {
        "regressor": (forest, load_diabetes(as_frame=True).frame, "target"),
        "pipeline": (pipeline, shop, "bought"),
    }


def register_own_models(s: Settings) -> dict[str, Path]:
    """Train, register (`modelgate model register`) and write request bodies for the
    own-model targets; kind -> file of v1 bodies, one a line."""
    import joblib

    folder = WORK / "own-models"
    folder.mkdir(parents=True, exist_ok=True)
    bodies: dict[str, Path] = {}
    for kind, (estimator, table, target) in _own_model_tables().items():
        name = OWN_MODELS[kind]
        shutil.rmtree(s.model_store / name, ignore_errors=True)
        estimator.fit(table.drop(columns=[target]), table[target])
        joblib.dump(estimator, folder / f"{name}.joblib")
        table.to_csv(folder / f"{name}.csv", index=False)
        done = subprocess.run(
            [s.bin("modelgate"), "model", "register", name, str(folder / f"{name}.joblib"),
             "--data", str(folder / f"{name}.csv"), "--target", target],
            capture_output=True, text=True, env=_env(),
        )  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"registering {name} failed: {done.stderr.strip()[-500:]}")
        rows = table.drop(columns=[target]).sample(OWN_BODIES, replace=True, random_state=1)
        lines = [json.dumps({"instances": [row]}) for row in rows.to_dict("records")]
        bodies[kind] = folder / f"{name}.bodies"
        bodies[kind].write_text("\n".join(lines) + "\n")
    return bodies


def remove_own_models(s: Settings) -> None:
    for name in OWN_MODELS.values():
        shutil.rmtree(s.model_store / name, ignore_errors=True)


@contextmanager
def full_stack(s: Settings) -> Iterator[list[Target]]:
    """The whole stack (`make bench-up`), many users, every security feature on."""
    log = WORK / "log" / "stack.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    tokens_file = WORK / "tokens.txt"
    try:
        own_bodies = register_own_models(s)
    except BaseException:
        remove_own_models(s)
        raise
    try:
        up_s = _make("bench-up", log)
    except BaseException:
        remove_own_models(s)
        raise
    try:
        people = Users(s, s.users)
        t0 = time.monotonic()
        admin = people.admin_token()
        passwords = people.create(admin)
        tokens = people.tokens(passwords)
        setup_s = time.monotonic() - t0
        tokens_file.touch(mode=0o600)
        tokens_file.write_text("\n".join(tokens) + "\n")
        info = {
            "endpoint": f"POST /v1/models/{s.model}/predict",
            "transport": "HTTPS via nginx",
            "users": len(tokens),
            "stack": {
                "make_up_to_ready_s": round(up_s, 2),
                "users_and_tokens_s": round(setup_s, 2),
                "profile": profile_env(),
            },
        }
        base = f"https://127.0.0.1:{s.https_port}"
        url = f"{base}/v1/models/{s.model}/predict"
        roots = [_supervisord_pid()]
        yield [
            Target("full", "modelgate (full stack)", Load(url, "v1", 1, tokens_file), roots, info),
            Target(
                "full-v2",
                "modelgate, v2 infer",
                Load(f"{base}/v2/models/{s.model}/infer", "v2", 1, tokens_file, "input"),
                roots,
                {**info, "endpoint": f"POST /v2/models/{s.model}/infer", "stack": None},
            ),
            Target(
                "full-seed-route",
                "modelgate, seed's /predict",
                Load(f"{base}/predict", "seed", 1, tokens_file),
                roots,
                {**info, "endpoint": "POST /predict", "stack": None},
            ),
            Target(
                "batch-100",
                "modelgate batch, 100 rows",
                Load(url, "v1", 100, tokens_file),
                roots,
                {**info, "stack": None},
            ),
            Target(
                "batch-1000",
                "modelgate batch, 1000 rows",
                Load(url, "v1", 1000, tokens_file),
                roots,
                {**info, "stack": None},
            ),
            *(
                Target(
                    kind,
                    title,
                    Load(
                        f"{base}/v1/models/{OWN_MODELS[kind]}/predict",
                        "v1",
                        1,
                        tokens_file,
                        bodies=own_bodies[kind],
                    ),
                    roots,
                    {
                        **info,
                        "endpoint": f"POST /v1/models/{OWN_MODELS[kind]}/predict",
                        "model": model,
                        "stack": None,
                    },
                )
                for kind, title, model in (
                    (
                        "regressor",
                        "modelgate, a regressor",
                        "RandomForestRegressor(100 trees), diabetes",
                    ),
                    (
                        "pipeline",
                        "modelgate, a pipeline with strings",
                        "one-hot ColumnTransformer + LogisticRegression, 2 string columns",
                    ),
                )
            ),
        ]
        people.remove(people.admin_token())
    finally:
        tokens_file.unlink(missing_ok=True)
        _make("down", log)
        remove_own_models(s)
