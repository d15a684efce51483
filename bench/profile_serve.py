"""Run `fluxgate <args>` under pyinstrument and write a text profile when it ends.

    python bench/profile_serve.py OUT.txt serve --config cfg.yaml

Used by `pipeline.py --profile DIR`. With BENCH_PROFILE_SIGNALS set, it samples only between a
SIGUSR1 and the next SIGUSR2 (pipeline.py sends them around each throughput phase), so start-up
and idle time stay out. uvicorn re-raises the SIGTERM it caught after its graceful
shutdown, with the handler it found at start; the handler set here turns that into SystemExit so
the profile is written. Samples the main thread only (the event loop); aiosqlite's and anyio's
worker threads are not in it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from pyinstrument import Profiler


def _owner(path: str) -> str:
    """Who a frame's code belongs to: a site-packages distribution, one of ours, the stdlib."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for ours in ("gateway", "adapters", "billing"):
        if f"/{ours}/" in path:
            return ours
    if "asyncio/runners.py" in path:
        return "(event loop: idle + uvloop's C code)"
    if path.startswith("<"):  # <built-in>, SQLAlchemy's generated wrappers...
        return "sqlalchemy" if "sqlalchemy" in path else "(built-in)"
    return "(stdlib: " + path.rsplit("/", 1)[-1] + ")"


def breakdown(profiler: Profiler) -> str:
    """Self time per package (where the main thread's samples landed), largest first."""
    session = profiler.last_session
    if session is None:
        return ""
    root = session.root_frame(trim_stem=False)
    owners: dict[str, float] = {}
    todo = [(root, "(other)")] if root else []
    while todo:
        frame, parent = todo.pop()
        own = frame.time - sum(child.time for child in frame.children)
        # a synthetic "[self]"/"[await]" leaf has no file: its time is its parent's
        key = _owner(frame.file_path) if frame.file_path and not frame.is_synthetic else parent
        if key == "(built-in)":  # name the C function: `sleep`, `fsync`, `acquire`...
            key = f"(built-in {frame.function})"
        owners[key] = owners.get(key, 0.0) + max(own, 0.0)
        todo.extend((child, key) for child in frame.children)
    idle = sum(v for k, v in owners.items() if k.startswith("(event loop"))
    busy = sum(owners.values()) - idle
    lines = ["", "Self time by package (main thread; % of the time not in the event loop):"]
    for key, value in sorted(owners.items(), key=lambda kv: -kv[1])[:25]:
        share = "" if key.startswith("(event loop") else f" {value / busy * 100:5.1f} %"
        lines.append(f"  {value:8.3f} s{share}  {key}")
    return "\n".join(lines) + "\n"


def main() -> None:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    profiler = Profiler(interval=0.001, async_mode="disabled")
    sys.argv = ["fluxgate", *argv]
    if os.environ.get("BENCH_PROFILE_SIGNALS"):  # only between SIGUSR1 and SIGUSR2
        signal.signal(signal.SIGUSR1, lambda *_: profiler.is_running or profiler.start())
        signal.signal(signal.SIGUSR2, lambda *_: profiler.is_running and profiler.stop())
    else:
        profiler.start()
    try:
        from gateway.cli import main as cli_main

        cli_main()
    finally:
        if profiler.is_running:
            profiler.stop()
        if profiler.last_session is None:
            out.write_text("no samples\n")
        else:
            profiler.last_session.save(str(out.with_suffix(".pyisession")))  # re-render later
            out.write_text(profiler.output_text(unicode=True, color=False, show_all=False)
                           + breakdown(profiler))


if __name__ == "__main__":
    main()
