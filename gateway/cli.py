"""The `fluxgate` command: serve, keys, usage, db, webhooks, storage, worker."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from billing import keys as key_service
from billing import ledger, usage
from billing.errors import BillingError
from billing.pricing import MICRO, to_micro
from billing.tables import ApiKeyRow
from gateway import __version__, logcontext
from gateway.database import make_engine, make_sessionmaker, upgrade
from gateway.datadir import DataDirError, database_line, ensure_writable
from gateway.errors import GatewayError
from gateway.settings import ConfigError, Settings, load_settings

app = typer.Typer(help="fluxgate: an OpenAI-compatible gateway for FLUX.1 Kontext",
                  pretty_exceptions_show_locals=False)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
webhooks_app = typer.Typer(help="Outbound result webhooks.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")
storage_app = typer.Typer(help="Re-hosted file storage.", no_args_is_help=True)
app.add_typer(storage_app, name="storage")
console = Console()
T = TypeVar("T")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file",
                                                 envvar="FLUXGATE_CONFIG")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fluxgate {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _main(ctx: typer.Context,
          version: Annotated[bool, typer.Option(
              "--version", callback=_version, is_eager=True, help="print the version")] = False,
          ) -> None:
    """fluxgate: an OpenAI-compatible gateway for FLUX.1 Kontext."""
    if ctx.invoked_subcommand is None:  # bare `fluxgate`: the help, and where the data is
        typer.echo(ctx.get_help())
        try:
            typer.echo(database_line(load_settings(None)))
        except ConfigError as exc:
            typer.echo(f"fluxgate: {exc}", err=True)
            raise typer.Exit(2) from exc


def _settings(config: Path | None, **overrides: object) -> Settings:
    """The settings, with a usable data directory; a problem ends the command in one line."""
    try:
        settings = load_settings(config, **overrides)
        ensure_writable(settings.data_dir)
    except (ConfigError, DataDirError) as exc:
        typer.echo(f"fluxgate: {exc}", err=True)
        raise typer.Exit(2) from exc
    return settings


def _amount(value: str, *, positive: bool) -> int:
    """A money amount in the currency as micro-units; typer.BadParameter (a usage error, one
    line) when it is not a number or is out of range."""
    from decimal import Decimal, InvalidOperation

    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        raise typer.BadParameter(f"{value!r} is not an amount (e.g. 10 or 10.50)") from None
    if not number.is_finite() or number < 0 or (positive and number == 0):
        raise typer.BadParameter(f"{value} must be {'above' if positive else 'at least'} 0")
    return to_micro(number)


def _balance_amount(value: str | None) -> int | None:
    return None if value is None else _amount(value, positive=False)


def _topup_amount(value: str) -> int:
    return _amount(value, positive=True)


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


#: how JSON output states money: integers of this unit (text output uses the currency itself)
def _money_unit(settings: Settings) -> str:
    return f"micro-{settings.billing.currency} (1 {settings.billing.currency} = {MICRO})"


@app.command()
def serve(config: ConfigOpt = None,
          host: Annotated[str | None, typer.Option(help="bind address")] = None,
          port: Annotated[int | None, typer.Option(help="port", min=1, max=65535)] = None,
          ) -> None:
    """Run the gateway (applies database migrations first)."""
    import uvicorn

    from gateway.app import create_app, tune_gc

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = _settings(config, **overrides)
    logcontext.configure(settings.log_level, settings.log_format)
    _preflight(settings)
    from gateway.serving import GatewayServer, server_config

    uv_config = server_config(create_app(settings), settings,
                              log_level=settings.log_level.lower(),
                              # one format: uvicorn's loggers go to ours; the app writes the
                              # access lines (gateway/logcontext.py)
                              log_config=None if settings.log_format == "json" else
                              uvicorn.config.LOGGING_CONFIG)
    tune_gc()
    GatewayServer(uv_config).run()  # a stop answers open requests first (gateway/serving.py)


def _preflight(settings: Settings) -> None:
    """Check what start-up would otherwise fail on deep inside the server (the storage, every
    channel's type and options), so a misconfiguration ends `serve` with one line instead of
    a traceback."""

    from gateway.app import build_storage, close_storage
    from gateway.jobs import routing

    async def go() -> None:
        await close_storage(await build_storage(settings))
        routing_log = logging.getLogger(routing.__name__)
        level = routing_log.level  # the server logs the channels itself, once, when it starts
        routing_log.setLevel(logging.ERROR)
        try:
            await routing.build_router(settings).aclose()
        finally:
            routing_log.setLevel(level)

    try:
        asyncio.run(go())
    except ConfigError as exc:
        typer.echo(f"fluxgate: {exc}", err=True)
        raise typer.Exit(2) from exc


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Option(help="a label for the key")],
                balance: Annotated[int | None, typer.Option(
                    parser=_balance_amount, metavar="AMOUNT",
                    help="prepaid balance in the currency (omit for an unlimited key)")] = None,
                test: Annotated[bool, typer.Option(
                    "--test", help="a test-mode key: sandbox only, never charged")] = False,
                model: Annotated[list[str] | None, typer.Option(
                    help="allow only this model (repeatable)")] = None,
                as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
                key_only: Annotated[bool, typer.Option(
                    "--key-only", help="print only the key (for `export KEY=$(...)`)")] = False,
                provenance: Annotated[str | None, typer.Option(
                    help="off | metadata | signed (default: the price group's or config's)")
                ] = None,
                config: ConfigOpt = None) -> None:
    """Create a key and print it (it is shown only once) with the database it went into."""
    settings = _settings(config)
    try:
        created = _with_session(settings, lambda s: key_service.create_key(
            s, name=name, mode="test" if test else "live", balance=balance,
            models=model or None, provenance=provenance))
    except BillingError as exc:
        raise _fail(exc) from exc
    where = database_line(settings)
    if key_only:
        typer.echo(created.plaintext)
        typer.echo(where, err=True)
        return
    if as_json:
        typer.echo(json.dumps({"id": created.row.id, "key": created.plaintext,
                               "name": name, "mode": created.row.mode,
                               "database": where.removeprefix("database: ")}))
        return
    console.print(f"[bold]{created.plaintext}[/bold]", soft_wrap=True)
    console.print(f"id {created.row.id} · {created.row.mode} · "
                  + ("unlimited" if created.row.unlimited
                     else f"balance {_money(created.row.balance)} {settings.billing.currency}"),
                  soft_wrap=True)
    console.print(where, soft_wrap=True, markup=False)
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
                                "money_unit": _money_unit(settings),
                                "revoked": r.revoked_at is not None,
                                "provenance": r.provenance} for r in rows]))
        return
    _print_keys(rows, settings.billing.currency)
    console.print(database_line(settings), soft_wrap=True, markup=False)


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


def _print_keys(rows: list[ApiKeyRow], currency: str) -> None:
    """Keys as a table, or, where the terminal is too narrow for one, as two lines per key:
    ids and keys are never cut or wrapped, and the balance names its currency."""
    from rich.measure import Measurement

    table = Table("id", "name", "key", "mode", f"balance ({currency})", "rpm", "jobs max",
                  "group", "status", box=box.SIMPLE_HEAD)
    cells = [_key_cells(r) for r in rows]
    for row in cells:
        table.add_row(*row)
    unbounded = console.options.update_width(10_000)
    if Measurement.get(console, unbounded, table).maximum <= console.width:
        console.print(table)
        return
    for key_id, name, display, mode, balance, rpm, jobs, group, status in cells:
        console.print(f"{key_id}  {display}  {name}", soft_wrap=True, markup=False)
        console.print(f"    {mode} · balance {balance}"
                      f"{'' if balance == 'unlimited' else ' ' + currency} · rpm {rpm} · "
                      f"jobs max {jobs} · group {group} · {status}", soft_wrap=True,
                      markup=False)


def _key_cells(r: ApiKeyRow) -> tuple[str, ...]:
    status = "revoked" if r.revoked_at else ("disabled" if r.disabled else "active")
    return (r.id, r.name, r.display, r.mode, "unlimited" if r.unlimited else _money(r.balance),
            str(r.rpm or "-"), str(r.max_concurrency or "-"), r.price_group or "-", status)


def _fail(exc: BillingError) -> typer.Exit:
    typer.echo(f"fluxgate: {exc.message}", err=True)
    return typer.Exit(1)


@keys_app.command("update")
def keys_update(key_id: str,
                name: Annotated[str | None, typer.Option(help="a new label")] = None,
                rpm: Annotated[int | None, typer.Option(help="requests per minute")] = None,
                max_concurrency: Annotated[int | None, typer.Option(
                    help="jobs in flight at most")] = None,
                price_group: Annotated[str | None, typer.Option(help="price group")] = None,
                model: Annotated[list[str] | None, typer.Option(
                    help="allow only this model (repeatable)")] = None,
                ip: Annotated[list[str] | None, typer.Option(
                    help="allow only this IP/CIDR (repeatable)")] = None,
                disable: Annotated[bool | None, typer.Option(
                    "--disable/--enable", help="disable or re-enable the key")] = None,
                provenance: Annotated[str | None, typer.Option(
                    help="off | metadata | signed: what the key's results carry")] = None,
                clear: Annotated[list[str] | None, typer.Option(
                    help="clear a setting: rpm, max-concurrency, price-group, models, ip, "
                         "provenance")
                ] = None,
                config: ConfigOpt = None) -> None:
    """Change a key's settings (options left out stay as they are)."""
    changes: dict[str, Any] = {k: v for k, v in {
        "name": name, "rpm": rpm, "max_concurrency": max_concurrency,
        "price_group": price_group, "models": model or None, "ip_allow": ip or None,
        "disabled": disable, "provenance": provenance}.items() if v is not None}
    fields = {"rpm": "rpm", "max-concurrency": "max_concurrency", "price-group": "price_group",
              "models": "models", "ip": "ip_allow", "provenance": "provenance"}
    for item in clear or []:
        if item not in fields:
            typer.echo(f"fluxgate: cannot clear {item!r}; use one of {', '.join(fields)}",
                       err=True)
            raise typer.Exit(2)
        changes[fields[item]] = None
    settings = _settings(config)
    try:
        row = _with_session(settings, lambda s: key_service.update_key(s, key_id, **changes))
    except BillingError as exc:
        raise _fail(exc) from exc
    _print_keys([row], settings.billing.currency)


@keys_app.command("topup")
def keys_topup(key_id: str,
               amount: Annotated[int, typer.Argument(
                   parser=_topup_amount, metavar="AMOUNT",
                   help="amount in the currency, e.g. 10.50")],
               note: Annotated[str | None, typer.Option(help="a note for the ledger")] = None,
               config: ConfigOpt = None) -> None:
    """Add money to a prepaid key (a ledger row)."""
    settings = _settings(config)
    micro = amount

    async def go(s: AsyncSession) -> ApiKeyRow:
        found = await key_service.get_key(s, key_id)
        if found.unlimited:
            raise _Refused(f"{key_id} is an unlimited key: it has no balance to top up and is "
                           "never refused for money (create a prepaid key with "
                           "`keys create --balance AMOUNT`)")
        await ledger.top_up(s, key_id, micro, note=note)
        row = await key_service.get_key(s, key_id)
        await s.refresh(row)
        return row

    try:
        row = _with_session(settings, go)
    except (BillingError, ValueError, _Refused) as exc:
        typer.echo(f"fluxgate: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(1) from exc
    currency = settings.billing.currency
    console.print(f"topped up {row.id} by {_money(micro)} {currency}: "
                  f"balance {_money(row.balance)} {currency}", soft_wrap=True)


class _Refused(Exception):
    """A CLI request refused before anything changed; the message is one line."""


@app.command("verify")
def verify(file: Annotated[Path, typer.Argument(help="an image file (PNG, JPEG, WebP)")],
           trust: Annotated[Path | None, typer.Option(
               help="CA certificates (PEM) to trust; default provenance.trust_anchors_file")
           ] = None,
           config: ConfigOpt = None) -> None:
    """Show what an image carries about its origin: the IPTC digital source type (XMP) and
    its C2PA manifest, validated by c2pa's reader. Exits 1 when a manifest does not validate,
    2 when the file cannot be read."""
    from gateway.images.credentials import describe

    trust = trust or _settings(config).provenance.trust_anchors_file
    try:
        data = file.read_bytes()
        anchors = trust.read_text(encoding="ascii") if trust is not None else None
    except (OSError, UnicodeDecodeError) as exc:
        typer.echo(f"fluxgate: cannot read {getattr(exc, 'filename', None) or trust}",
                   err=True)
        raise typer.Exit(2) from exc
    found = describe(data, trust_anchors=anchors)
    if found["format"] is None:
        typer.echo(f"fluxgate: {file} is not a PNG, JPEG or WebP image", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(found, indent=2))
    manifest = found["c2pa"]
    if manifest is not None and manifest["validation_state"] not in ("Valid", "Trusted"):
        raise typer.Exit(1)


@app.command("usage")
def usage_cmd(key: Annotated[str | None, typer.Option("--key", help="one key's usage")] = None,
              since: Annotated[str | None, typer.Option(help="ISO date or unix seconds")] = None,
              until: Annotated[str | None, typer.Option(help="ISO date or unix seconds")] = None,
              as_csv: Annotated[bool, typer.Option("--csv", help="one CSV line per job")] = False,
              as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
              config: ConfigOpt = None) -> None:
    """Usage and spend per key or overall, from the ledger (same code as GET /v1/usage)."""
    from gateway.api.usage import parse_when

    settings = _settings(config)
    try:
        start, end = parse_when(since, "since"), parse_when(until, "until")
    except GatewayError as exc:
        typer.echo(f"fluxgate: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    if key is not None:
        from billing.errors import InvalidKey

        try:
            _with_session(settings, lambda s: key_service.get_key(s, key))
        except InvalidKey as exc:
            typer.echo(f"fluxgate: {exc.message}", err=True)
            raise typer.Exit(1) from exc
    if as_csv:
        typer.echo(_with_session(settings, lambda s: usage.usage_csv(
            s, key_id=key, since=start, until=end)), nl=False)
        return
    report = _with_session(settings, lambda s: usage.usage_report(
        s, key_id=key, since=start, until=end))
    if as_json:
        typer.echo(json.dumps({**report.as_dict(), "currency": settings.billing.currency,
                               "money_unit": _money_unit(settings)}))
        return
    t = report.totals
    rate = "-" if t.success_rate is None else f"{t.success_rate:.1%}"
    head = f"usage of {key}" if key else "usage of every key"
    console.print(f"[bold]{head}[/bold] ({settings.billing.currency})")
    if report.balance is not None:
        console.print(f"balance {_money(report.balance)} · top-ups {_money(report.topups)} · "
                      f"adjustments {_money(report.adjustments)}")
    console.print(f"jobs {t.jobs} · succeeded {t.succeeded} · success rate {rate} · "
                  f"spend {_money(t.spend)} · held {_money(t.held)} · "
                  f"average {_money(t.average_cost)} · p50 {_secs(t.latency_p50)} · "
                  f"p95 {_secs(t.latency_p95)}")
    for dim, groups in report.by.items():
        cur = settings.billing.currency
        table = Table(dim, "jobs", "succeeded", "success", f"spend ({cur})", f"avg ({cur})",
                      f"upstream ({cur})", f"margin ({cur})", "p50", "p95", title=f"by {dim}")
        for name, g in groups.items():
            table.add_row(name or "-", str(g.jobs), str(g.succeeded),
                          "-" if g.success_rate is None else f"{g.success_rate:.0%}",
                          _money(g.spend), _money(g.average_cost), _money(g.upstream_cost),
                          _money(g.margin), _secs(g.latency_p50), _secs(g.latency_p95))
        console.print(table)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


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
    console.print(f"{database_line(settings)} is up to date", soft_wrap=True, markup=False)


@webhooks_app.command("secret")
def webhooks_secret(config: ConfigOpt = None) -> None:
    """Print the gateway-wide webhook secret (whsec_...) that signs webhooks sent without a
    per-request webhook_secret; it is generated into $data_dir/webhook.key on first use."""
    from gateway.webhooks.service import gateway_secret

    typer.echo(gateway_secret(_settings(config)))


@webhooks_app.command("replay")
def webhooks_replay(delivery_id: Annotated[str, typer.Argument(help="the msg_... id")],
                    config: ConfigOpt = None) -> None:
    """Make a failed or disabled webhook delivery pending again (a running gateway sends it
    within its poll interval)."""
    from datetime import UTC, datetime

    from gateway.webhooks.outbox import replay

    async def go(session: AsyncSession) -> bool:
        return await replay(session, delivery_id, datetime.now(UTC))

    if not _with_session(_settings(config), go):
        typer.echo(f"fluxgate: no failed or disabled delivery {delivery_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{delivery_id}: pending")


@storage_app.command("reconcile")
def storage_reconcile(
        apply: Annotated[bool, typer.Option("--apply", help="remove what is found")] = False,
        grace: Annotated[float | None, typer.Option(
            "--grace", min=60, help="seconds an orphan must be old (default storage.sweep_grace; "
            "never less than jobs.deadline + jobs.download_timeout)",
        )] = None,
        config: ConfigOpt = None) -> None:
    """Report storage orphans: stored objects with no file row, and input/mask/output file
    rows no job references, older than the grace period (never a live job's files). With
    --apply, remove them, as the periodic sweep (`storage.sweep_interval`) does."""
    from gateway.app import build_storage, close_storage
    from gateway.storage import sweep

    settings = _settings(config)
    wait = sweep.effective_grace(settings, grace)

    async def go() -> sweep.Orphans:
        storage = await build_storage(settings)
        engine = make_engine(settings.resolved_database_url)
        try:
            act = sweep.sweep if apply else sweep.find_orphans
            return await act(storage, make_sessionmaker(engine), grace=wait)
        finally:
            await engine.dispose()
            await close_storage(storage)

    found = _run_storage(go)
    for key in found.objects:
        typer.echo(f"object without a file row: {key}")
    for file_id, key in found.rows.items():
        typer.echo(f"file row no job references: {file_id} ({key})")
    verb = "removed" if apply else "found"
    typer.echo(f"{verb} {len(found.objects)} objects without a file row and {len(found.rows)} "
               f"file rows no job references, older than {wait:.0f} s; {found.unknown} "
               "objects under other keys left alone"
               + ("" if apply or not found.total else " (run with --apply to remove them)"))


def _run_storage(go: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a storage command; a storage that cannot be reached exits 1 with one line."""
    from gateway.storage.base import StorageError

    try:
        return asyncio.run(go())
    except StorageError as exc:
        typer.echo(f"fluxgate: storage: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def worker(
        model_path: Annotated[Path, typer.Option(
            "--model-path", help="a diffusers pipeline folder (Kontext dev, FLUX.2 dev or klein)",
            exists=True, file_okay=False)],
        device: Annotated[str, typer.Option(help="cuda, cuda:N or cpu")] = "cuda:0",
        host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="port", min=1, max=65535)] = 8200,
        secret_env: Annotated[str, typer.Option(
            help="environment variable holding the shared secret")] = "FLUXGATE_WORKER_SECRET",
        model: Annotated[str | None, typer.Option(
            help="the model id to report (default: the family's, e.g. flux-kontext-dev)")] = None,
        max_batch: Annotated[int, typer.Option(help="compatible jobs per pipeline call",
                                               min=1, max=64)] = 1,
        max_queue: Annotated[int, typer.Option(help="queued jobs before 429", min=1)] = 64,
        max_steps: Annotated[int, typer.Option(help="the most steps a job may ask", min=1)] = 100,
        max_area: Annotated[int | None, typer.Option(
            help="render at most this many pixels, same ratio (small GPUs, tests)",
            min=4096)] = None,
        ) -> None:
    """Run a local diffusers worker for one model (needs `pip install 'fluxgate[worker]'`)."""
    import os

    from worker.families import ModelDirError, detect

    secret = os.environ.get(secret_env) or None
    if secret is None and host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"fluxgate worker: set {secret_env} (the shared secret) to listen on {host}",
                   err=True)
        raise typer.Exit(2)
    try:  # a wrong folder is refused before the slow imports
        detect(model_path)
    except ModelDirError as exc:
        typer.echo(f"fluxgate worker: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        import diffusers  # noqa: F401  (only to say clearly that the extra is missing)
        import torch  # noqa: F401

        from worker.server import WorkerConfig
        from worker.server import serve as serve_worker
    except ImportError as exc:
        typer.echo(f"fluxgate worker: {exc.name or exc} is not installed; install the worker "
                   "extra: pip install 'fluxgate[worker]'", err=True)
        raise typer.Exit(2) from exc
    logcontext.configure("INFO")
    config = WorkerConfig(model_path=model_path, device=device, host=host, port=port,
                          secret=secret, model=model, max_batch=max_batch, max_queue=max_queue,
                          max_steps=max_steps, max_area=max_area)
    try:
        serve_worker(config)
    except (ModelDirError, RuntimeError) as exc:
        typer.echo(f"fluxgate worker: {exc}", err=True)
        raise typer.Exit(2) from exc


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # pragma: no cover - _settings handles the usual path
        typer.echo(f"fluxgate: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
