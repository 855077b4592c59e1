"""`suki-relay init`: a commented starter actions.yaml and templates folder, and the
gunicorn.conf.py that plain gunicorn reads from that folder (serve/hooks.py).

The starter is the repository's own example (actions.yaml and templates/ at its root),
packed into the wheel as suki_relay/starter_files/ (pyproject's force-include), so there is one
copy to keep working: `check` on it is tested. The written actions.yaml starts with the
YAML language server's modeline, naming actions.schema.json, written beside it from the
installed action types (`suki-relay schema` writes it again after installing a plugin).
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from suki_relay.config.schema import MODELINE, dumps
from suki_relay.errors import RelayError

FILES = ("actions.yaml", "templates", "gunicorn.conf.py")
SCHEMA_FILE = "actions.schema.json"  # what MODELINE names: editors check actions.yaml with it


def source() -> Traversable:
    """The packed starter, or in a source checkout the repository's example."""
    packed = resources.files("suki_relay") / "starter_files"
    if packed.is_dir():
        return packed
    return Path(__file__).resolve().parents[2]


def write_starter(folder: Path, force: bool = False) -> list[Path]:
    """Write the starter into ``folder`` (made if missing); returns the files written.
    An existing actions.yaml is kept unless ``force``; existing templates and an existing
    gunicorn.conf.py (which may hold settings of the user's) are never overwritten."""
    target = folder / "actions.yaml"
    if target.exists() and not force:
        raise RelayError(f"{target} exists; keep it, or give --force to replace it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = [target, folder / SCHEMA_FILE]
        starter = (source() / "actions.yaml").read_bytes()
        modeline = MODELINE.encode() + b"\n"
        target.write_bytes(starter if starter.startswith(modeline) else modeline + starter)
        (folder / SCHEMA_FILE).write_text(dumps(), encoding="utf-8")
        (folder / "templates").mkdir(exist_ok=True)
        for item in (source() / "templates").iterdir():
            path = folder / "templates" / item.name
            if item.is_file() and not path.exists():
                path.write_bytes(item.read_bytes())
                written.append(path)
        conf = folder / "gunicorn.conf.py"
        if not conf.exists():
            conf.write_bytes((source() / "gunicorn.conf.py").read_bytes())
            written.append(conf)
    except OSError as exc:
        raise RelayError(f"cannot write the starter into {folder}: {exc.strerror}") from None
    return written
