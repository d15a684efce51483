"""The `fluxgate` command: serve, keys, db."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from billing import keys as key_service
from billing.pricing import MICRO, to_micro
from gateway.database import make_engine, make_sessionmaker, upgrade
from gateway.settings import ConfigError, Settings, load_settings

app = typer.Typer(help="fluxgate: an OpenAI-compatible gateway for FLUX.1 Kontext",
                  no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
console = Console()
T = TypeVar("T")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file",
                                                 envvar="FLUXGATE_CONFIG")]


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        typer.echo(f"fluxgate: {exc}", err=True)
        raise typer.Exit(2) from exc


def _with_session(settings: Settings, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def go() -> T:
        engine = make_engine(settings.resolved_database_url)
        try:
            if settings.auto_migrate:
                await upgrade(engine)
            async with make_sessionmaker(engine).begin() as session:
                return await fn(session)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _money(micro: int) -> str:
    return f"{micro / MICRO:.6f}".rstrip("0").rstrip(".")


@app.command()
def serve(config: ConfigOpt = None,
          host: Annotated[str | None, typer.Option(help="bind address")] = None,
          port: Annotated[int | None, typer.Option(help="port")] = None) -> None:
    """Run the gateway (applies database migrations first)."""
    import uvicorn

    from gateway.app import create_app

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = _settings(config, **overrides)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=25)


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Option(help="a label for the key")],
                balance: Annotated[str | None, typer.Option(
                    help="prepaid balance in the currency (omit for an unlimited key)")] = None,
                test: Annotated[bool, typer.Option(
                    "--test", help="a test-mode key: sandbox only, never charged")] = False,
                model: Annotated[list[str] | None, typer.Option(
                    help="allow only this model (repeatable)")] = None,
                as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
                config: ConfigOpt = None) -> None:
    """Create a key and print it (it is shown only once)."""
    settings = _settings(config)
    amount = to_micro(balance) if balance is not None else None
    created = _with_session(settings, lambda s: key_service.create_key(
        s, name=name, mode="test" if test else "live", balance=amount, models=model or None))
    if as_json:
        typer.echo(json.dumps({"id": created.row.id, "key": created.plaintext,
                               "name": name, "mode": created.row.mode}))
        return
    console.print(f"[bold]{created.plaintext}[/bold]")
    console.print(f"id {created.row.id} · {created.row.mode} · "
                  + ("unlimited" if created.row.unlimited
                     else f"balance {_money(created.row.balance)} {settings.billing.currency}"))
    console.print("[yellow]Store this key now: it is shown only once.[/yellow]")


@keys_app.command("list")
def keys_list(config: ConfigOpt = None,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List keys (never their secrets)."""
    settings = _settings(config)
    rows = _with_session(settings, key_service.list_keys)
    if as_json:
        typer.echo(json.dumps([{"id": r.id, "name": r.name, "key": r.display, "mode": r.mode,
                                "balance": None if r.unlimited else r.balance,
                                "revoked": r.revoked_at is not None} for r in rows]))
        return
    table = Table("id", "name", "key", "mode", "balance", "status")
    for r in rows:
        status = "revoked" if r.revoked_at else ("disabled" if r.disabled else "active")
        table.add_row(r.id, r.name, r.display, r.mode,
                      "unlimited" if r.unlimited else _money(r.balance), status)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, config: ConfigOpt = None) -> None:
    """Revoke a key by id; it stops working at once."""
    from billing.errors import InvalidKey

    settings = _settings(config)
    try:
        row = _with_session(settings, lambda s: key_service.revoke(s, key_id))
    except InvalidKey as exc:
        typer.echo(f"fluxgate: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    console.print(f"revoked {row.id} ({row.name})")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Apply every pending database migration."""
    settings = _settings(config)

    async def go() -> None:
        engine = make_engine(settings.resolved_database_url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(go())
    console.print("database is up to date")


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # pragma: no cover - _settings handles the usual path
        typer.echo(f"fluxgate: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
