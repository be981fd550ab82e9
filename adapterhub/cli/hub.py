"""The hub: ``serve``, ``token create/list/revoke`` (on the hub's registry), ``login``,
``logout``."""

from __future__ import annotations

from datetime import timedelta

import click

from adapterhub.cli import cli
from adapterhub.cli.common import Duration, db_option, json_option
from adapterhub.cli.output import emit_json, table


@cli.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes the hub to the network).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--auth", type=click.Choice(["required", "read-public"]), default="required",
              show_default=True, help="required: every request needs a token; read-public: "
                                      "anyone may read, writing needs a token.")
@click.option("--header-timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
              metavar="SECONDS", help="Close a connection whose request headers take longer.")
@click.option("--body-timeout", type=click.FloatRange(0.1), default=20.0, show_default=True,
              metavar="SECONDS", help="Give up on a request body that pauses this long.")
@click.option("--keep-alive", type=click.FloatRange(0.1), default=5.0, show_default=True,
              metavar="SECONDS", help="Close idle keep-alive connections after this long.")
@click.option("--max-concurrency", type=click.IntRange(1), default=256, show_default=True,
              help="Connections and requests in flight before new ones get 503.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Hub processes on this port; each is a stateless replica of the registry "
                   "(use PostgreSQL, and an object store for blobs: docs/objectstore.md).")
def serve(db: str | None, host: str, port: int, auth: str, header_timeout: float,
          body_timeout: float, keep_alive: float, max_concurrency: int, workers: int) -> None:
    """Serve the registry over HTTP: the native API (push/pull --to/--from http://...), the
    Hugging Face Hub protocol (HF_ENDPOINT=http://host:port) and an HTML view at /.

    Access logs go to stderr as JSON lines; /health is open, /metrics (Prometheus) needs an
    admin token. docs/security.md explains the limits.
    """
    from adapterhub.hub.app import serve as run
    from adapterhub.hub.context import Settings

    click.echo(f"adapterhub hub on http://{host}:{port} (auth {auth}); Ctrl-C stops it",
               err=True)
    run(db, host=host, port=port, workers=workers, settings=Settings(
        auth=auth, header_timeout=header_timeout, body_timeout=body_timeout,
        keep_alive=keep_alive, max_concurrency=max_concurrency))


@cli.group()
def token() -> None:
    """Manage the API tokens of a hub (run where its registry is: --db / ADAPTERHUB_DB)."""


@token.command("create")
@click.option("--scope", "scopes", multiple=True, required=True, metavar="LEVEL[:PATTERN]",
              help="read, write or admin, on namespaces matching PATTERN (default *); "
                   "repeat for several, e.g. --scope read --scope write:team-*.")
@click.option("--expires", type=Duration(), metavar="DURATION",
              help="Lifetime, e.g. 30d or 12h (default: never expires).")
@click.option("--name", help="A note saying what the token is for.")
@json_option
@db_option
def token_create(scopes: tuple[str, ...], expires: timedelta | None, name: str | None,
                 as_json: bool, db: str | None) -> None:
    """Create a token and print it (once: only its hash is stored)."""
    from adapterhub.registry import Registry
    from registry_db.clock import utcnow

    with Registry(db) as reg:
        secret, info = reg.service.tokens.create(
            list(scopes), name=name, expires_at=utcnow() + expires if expires else None)
    if as_json:
        emit_json({"token": secret, **info.to_dict()})
        return
    click.echo(secret)
    when = f", expires {info.expires_at:%Y-%m-%d %H:%M} UTC" if info.expires_at else ""
    click.echo(f"token {info.id}: {', '.join(map(str, info.scopes))}{when}. It is shown "
               f"only now; clients use it as ADAPTERHUB_TOKEN or with 'adapterhub login URL'",
               err=True)


@token.command("list")
@json_option
@db_option
def token_list(as_json: bool, db: str | None) -> None:
    """List tokens (never their secrets)."""
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        infos = reg.service.tokens.list()
    if as_json:
        emit_json([i.to_dict() for i in infos])
        return
    table([[str(i.id), i.prefix + "…", ",".join(map(str, i.scopes)), i.state,
            f"{i.expires_at:%Y-%m-%d %H:%M}" if i.expires_at else "never", i.name or ""]
           for i in infos], ["ID", "TOKEN", "SCOPES", "STATE", "EXPIRES", "NAME"])


@token.command("revoke")
@click.argument("token_id", metavar="ID|PREFIX")
@json_option
@db_option
def token_revoke(token_id: str, as_json: bool, db: str | None) -> None:
    """Revoke a token (by the ID or the TOKEN prefix that 'token list' shows)."""
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        info = reg.service.tokens.revoke(token_id)
    if as_json:
        emit_json(info.to_dict())
    else:
        click.echo(f"revoked token {info.id} ({info.prefix}…)")


@cli.command()
@click.argument("url")
@click.option("--token", "secret", help="The token (default: prompt for it).")
@json_option
def login(url: str, secret: str | None, as_json: bool) -> None:
    """Check a token against the hub at URL and save it for that hub (0600 file)."""
    from adapterhub.registry.credentials import save_token
    from adapterhub.registry.http_client import HubClient

    secret = secret or click.prompt("token", hide_input=True)
    with HubClient(url, token=secret.strip()) as client:
        who = client.get_json("/api/v1/whoami")
    if who.get("token") is None:
        from adapterhub.errors import AuthenticationError

        raise AuthenticationError(f"{url} did not recognise the token")
    path = save_token(url, secret.strip())
    if as_json:
        emit_json({"url": url, "saved": path, "token": who["token"]})
    else:
        click.echo(f"logged in to {url}: token {who['token']['prefix']}… "
                   f"({', '.join(who['token']['scopes'])}); saved in {path}")


@cli.command()
@click.argument("url")
def logout(url: str) -> None:
    """Forget the token saved for the hub at URL."""
    from adapterhub.registry.credentials import forget_token

    click.echo(f"forgot the token for {url}" if forget_token(url)
               else f"no token was saved for {url}")
