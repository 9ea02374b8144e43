"""`modelgate model`: build, register, edit, sign, verify, list and load signed models.

The private model-signing key (secrets/model_signing_key) is used only here;
the inference service holds the public key alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ._paths import ProjectPaths

app = typer.Typer(help="Build, register, edit, sign, verify and list models.", no_args_is_help=True)

SIGNING_KEY = "model_signing_key"


def _keys(paths: ProjectPaths) -> tuple[Path, Path]:
    return paths.secrets / SIGNING_KEY, paths.secrets / f"{SIGNING_KEY}.pub"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def ensure_models(paths: ProjectPaths) -> list[str]:
    """Init step: the model-signing key pair and the demo models, when missing."""
    from modelgate_inference.store import ensure_signing_key, versions_of

    private, public = _keys(paths)
    made = []
    if ensure_signing_key(private, public):
        made.append(f"model-signing key (secrets/{SIGNING_KEY}, .pub)")
    from modelgate_inference.builder import DEMO_MODELS, build_demo

    for name in DEMO_MODELS:
        if not versions_of(paths.model_store, name):
            build_demo(paths.model_store, private, name)
            made.append(f"demo model {name} version 1 (model_store/{name}/1)")
    return made


@app.command("build-demo")
def build_demo_command(
    names: Annotated[
        list[str] | None, typer.Argument(help="demo models to build; default all")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="version to write; default the next free one")
    ] = None,
) -> None:
    """Train the demo models (scikit-learn's bundled datasets, no downloads), sign them
    and add each as a new version."""
    from modelgate_inference.builder import DEMO_MODELS, build_demo, next_version
    from modelgate_inference.store import ensure_signing_key

    paths = ProjectPaths.from_env()
    private, public = _keys(paths)
    ensure_signing_key(private, public)
    for name in names or list(DEMO_MODELS):
        if name not in DEMO_MODELS:
            raise _fail(f"no demo model {name!r}; choose from {', '.join(DEMO_MODELS)}")
        try:
            folder = build_demo(
                paths.model_store, private, name, version or next_version(paths.model_store, name)
            )
        except (FileExistsError, ValueError) as exc:
            raise _fail(str(exc)) from None
        typer.echo(f"built {name} version {folder.name} in {folder}")


@app.command("register")
def register_command(
    name: Annotated[str, typer.Argument(help="model name: lowercase letters, digits, _ and -")],
    artifact: Annotated[
        Path,
        typer.Argument(
            help="a fitted scikit-learn classifier, regressor or Pipeline, or an XGBoost / "
            "LightGBM model (scikit-learn API), saved with joblib"
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="CSV of training data: a header of column names, rows of numbers and text "
            "(string columns); gives the input schema (bounds, categories), reference rows "
            "and (with --target) accuracy or error"
        ),
    ],
    target: Annotated[
        str | None, typer.Option(help="column of --data holding the true class or value")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="version to write; default the next free one")
    ] = None,
    description: Annotated[str, typer.Option(help="free text for the listing")] = "",
) -> None:
    """Add your own model as a new signed version, converted to ONNX when the graph
    reproduces the model, else served by its own library. Unpickling ARTIFACT runs
    the code it holds: register only files you built yourself."""
    from modelgate_inference.builder import read_csv, register

    paths = ProjectPaths.from_env()
    private, _ = _keys(paths)
    if not private.exists():
        raise _fail("no model-signing key; run `modelgate init` first")
    try:
        folder = register(
            paths.model_store,
            private,
            name=name,
            artifact=artifact,
            data=read_csv(data, target),
            version=version,
            description=description,
        )
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    manifest = json.loads((folder / "manifest.json").read_text())
    typer.echo(f"registered {name} version {folder.name} in {folder}")
    typer.echo(f"{manifest['task']}, {len(manifest['input']['features'])} features")
    typer.echo(f"runtime: {manifest['runtime_reason']}")
    typer.echo(
        f"serve it: modelgate model load {name}, or POST /v1/models/{name}/load "
        "(scope models:admin)"
    )


@app.command("edit")
def edit_command(
    name: str,
    version: str,
    description: Annotated[str | None, typer.Option(help="new free text for the listing")] = None,
    class_names: Annotated[
        str | None, typer.Option(help="comma-separated names of the classes, in class order")
    ] = None,
) -> None:
    """Change a version's description or class names and sign the result. Refused
    unless the version's signature verifies: every other field stays as it was signed."""
    from modelgate_inference.builder import edit_manifest

    if description is None and class_names is None:
        raise _fail("nothing to change: give --description and/or --class-names")
    paths = ProjectPaths.from_env()
    private, public = _keys(paths)
    try:
        edit_manifest(
            paths.model_store / name / version,
            private,
            public,
            description=description,
            class_names=None if class_names is None else class_names.split(","),
        )
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"edited and signed {name} version {version}")


@app.command("sign")
def sign_command(
    name: str,
    version: str,
    i_built_this: Annotated[
        bool,
        typer.Option(
            "--i-built-this",
            help="vouch for the artifact files as they are now: rebuild the manifest's "
            "digests from them and sign (prints the digests; compare them with your build)",
        ),
    ] = False,
) -> None:
    """Sign a version only when that vouches for nothing unchecked. Without
    --i-built-this it refuses (exit 1) unless the current signature verifies: a manifest
    changed on disk is never signed as it stands, since whoever changed an artifact can
    change the manifest too. Use `modelgate model edit` for the description or class
    names."""
    from modelgate_inference.builder import NotSigned, sign_existing

    paths = ProjectPaths.from_env()
    private, public = _keys(paths)
    try:
        digests = sign_existing(
            paths.model_store / name / version, private, public, i_built_this=i_built_this
        )
    except NotSigned as exc:
        raise _fail(
            f"{exc.args[0]}; not signing. The description and class names change through "
            "`modelgate model edit`; if you built these artifact files yourself, "
            f"`modelgate model sign {name} {version} --i-built-this` signs them as they are"
        ) from None
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if not i_built_this:
        typer.echo(f"{name} version {version}: the signature verifies; nothing to sign")
        return
    for digest in digests:
        typer.echo(f"{digest.kind:<8} {digest.file}  sha256 {digest.sha256}  {digest.bytes} bytes")
    typer.echo(f"signed {name} version {version} as these files stand")


@app.command("verify")
def verify_command(
    name: Annotated[str | None, typer.Argument(help="one model; default all")] = None,
    version: Annotated[str | None, typer.Argument(help="one version; default all")] = None,
) -> None:
    """Check what the service checks before serving: signature, digests, and the
    reference predictions. Exit status 1 if any version would be refused."""
    from modelgate_inference.builder import verify_folder
    from modelgate_inference.store import ModelRefused, model_names, versions_of

    paths = ProjectPaths.from_env()
    _, public = _keys(paths)
    refused = 0
    for model in [name] if name else model_names(paths.model_store):
        versions = [version] if version else versions_of(paths.model_store, model)
        if not versions:
            typer.echo(f"{model}: no versions")
            refused += 1
        for v in versions:
            try:
                runtime = verify_folder(paths.model_store / model / v, public)
            except ModelRefused as exc:
                refused += 1
                typer.echo(f"{model}:{v}  REFUSED  {exc.reason}")
            else:
                typer.echo(f"{model}:{v}  ok  serves on {runtime}")
    if refused:
        raise typer.Exit(1)


@app.command("list")
def list_command() -> None:
    """Models and versions in the store, with the signature's state."""
    from modelgate_inference.store import (
        ModelRefused,
        load_public_key,
        model_names,
        read_verified_manifest,
        versions_of,
    )

    paths = ProjectPaths.from_env()
    _, public = _keys(paths)
    try:
        key = load_public_key(public)
    except (OSError, ValueError):
        raise _fail(f"no usable public key at {public}; run `modelgate init`") from None
    for model in model_names(paths.model_store):
        for v in versions_of(paths.model_store, model):
            try:
                manifest = read_verified_manifest(paths.model_store / model / v, key).manifest
            except ModelRefused as exc:
                typer.echo(f"{model:<16} {v:>4}  REFUSED: {exc.reason}")
                continue
            runtimes = f"onnx+{manifest.library}" if manifest.artifacts.onnx else manifest.library
            metric = ", ".join(f"{k}={val:.3g}" for k, val in manifest.metrics.items())
            typer.echo(
                f"{model:<16} {v:>4}  {manifest.created}  {manifest.estimator} "
                f"({manifest.task}, {runtimes}), {len(manifest.input.features)} features, "
                f"{metric}"
            )


@app.command("load")
def load_command(
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[
        str | None, typer.Option(help="version to serve; default the newest in the store")
    ] = None,
    user: Annotated[str, typer.Option(help="an admin's user name")] = "admin",
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="read the password from stdin; default secrets/admin_password"
        ),
    ] = False,
    url: Annotated[
        str | None,
        typer.Option(
            help="the stack's HTTPS address; default https://$MG_NGINX_HOST:$MG_HTTPS_PORT "
            "(MG_NGINX_HOST: localhost when unset)"
        ),
    ] = None,
) -> None:
    """Serve a registered version in every worker of the running stack: signs in as
    an admin (a token narrowed to models:admin) and calls POST /v1/models/NAME/load."""
    import sys

    from ._load import LoadFailed, load_over_https

    paths = ProjectPaths.from_env()
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = (paths.secrets / "admin_password").read_text().strip()
        except OSError:
            raise _fail("no secrets/admin_password; use --password-stdin") from None
    # Natively nginx is localhost; compose's cli container reaches it by its service name
    # (MG_NGINX_HOST) and checks its certificate for the certificate's first name.
    host = os.environ.get("MG_NGINX_HOST")
    server_name = None
    if host and not url:
        server_name = os.environ.get("MG_TLS_HOSTNAMES", "localhost").split(",")[0].strip()
    base = url or f"https://{host or 'localhost'}:{os.environ.get('MG_HTTPS_PORT', '8443')}"
    try:
        result = load_over_https(
            base, paths.certs / "ca.pem", user, password, name, version, server_name=server_name
        )
    except LoadFailed as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"serving {result['model']} version {result['version']} "
        f"({result['switched']} of {result['workers']} workers switched)"
    )
