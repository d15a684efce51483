"""Where fluxgate keeps its data: the one rule by which the CLI and the server find the data
directory (and so the SQLite database), and the check that it can be written.

The rule, first match wins:

1. `FLUXGATE_DATA_DIR` in the environment (a relative path is taken from the current folder);
2. `data_dir` in the config file (a relative path is taken from the config file's folder);
3. the per-user data folder: `$XDG_DATA_HOME/fluxgate`, by default `~/.local/share/fluxgate`
   on Linux (macOS `~/Library/Application Support/fluxgate`), as `platformdirs` names it.

So `fluxgate keys create` run from any folder writes where `fluxgate serve` reads. The database
is `database_url` when set, else `<data dir>/fluxgate.db`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

if TYPE_CHECKING:
    from gateway.settings import Settings

#: the environment variable of rule 1
DATA_DIR_ENV = "FLUXGATE_DATA_DIR"


class DataDirError(Exception):
    """The data directory cannot be created or written; the message is one line."""


def default_data_dir() -> Path:
    """Rule 3: this user's data folder for fluxgate (absolute, not created)."""
    return platformdirs.user_data_path("fluxgate", appauthor=False)


def from_config_file(value: str | os.PathLike[str], config_file: Path) -> Path:
    """Rule 2: a `data_dir` written in `config_file`, relative to that file's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else config_file.resolve().parent / path


def database_line(settings: Settings) -> str:
    """One line saying which database `settings` use and why, as the CLI prints it."""
    from sqlalchemy.engine import make_url

    if settings.database_url:
        url = make_url(settings.database_url).render_as_string(hide_password=True)
        return f"database: {url} (database_url)"
    return (f"database: {settings.data_dir / 'fluxgate.db'} (data dir from "
            f"{settings.data_dir_origin})")


def ensure_writable(path: Path) -> None:
    """Create `path` (with its parents) and check that this process can write files there;
    raises DataDirError naming the folder, the user and what to do."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "this user"
        raise DataDirError(
            f"data directory {path} is not writable by {user}: {reason}; make it writable "
            f"or set {DATA_DIR_ENV} to a folder this user can write") from exc
