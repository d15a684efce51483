"""Run `fluxgate <args>` under pyinstrument and write a text profile when it ends.

    python bench/profile_serve.py OUT.txt serve --config cfg.yaml

Used by `pipeline.py --profile DIR`. uvicorn re-raises the SIGTERM it caught after its graceful
shutdown, with the handler it found at start; the handler set here turns that into SystemExit so
the profile is written. Samples the main thread only (the event loop); aiosqlite's and anyio's
worker threads are not in it.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from pyinstrument import Profiler


def main() -> None:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    profiler = Profiler(interval=0.001, async_mode="disabled")
    sys.argv = ["fluxgate", *argv]
    profiler.start()
    try:
        from gateway.cli import main as cli_main

        cli_main()
    finally:
        profiler.stop()
        out.write_text(profiler.output_text(unicode=True, color=False, show_all=False))


if __name__ == "__main__":
    main()
