"""``fetch_note``: save the note (and friends) a success event links to, as files.

The documents are fetched by the core, exactly as for any action's ``fetch:`` (this type
asks for its ``links``), through the one Suki client: credentials go only to the
``suki:`` base URL. Files are written atomically (temporary file, fsync, rename),
owner-only (0600, folders 0700, tightened if they exist looser), at a path rendered from a
template that may not leave ``directory``. Every payload string the path template uses is
percent-encoded into one safe file-name segment first (``/`` and ``%`` encoded, ``.`` and
``..`` too), so no event can name another event's files: the encoding is one-to-one.
Running the same delivery again overwrites the same files.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from suki_relay.plugin import (
    CONTENT_RELATIONS,
    RELATIONS,
    Action,
    Delivery,
    Option,
    PermanentError,
    map_strings,
    note_text,
    render_value,
    unknown_relations,
)

DEFAULT_PATH = ("{{ event.encounter_id | default('no-encounter', true) }}/"
                "{{ event.session_id }}/{{ rel }}.json")
NAME_MAX = 255  # bytes in one file name (Linux, macOS)
PATH_MAX = 4000  # bytes in a whole path, a little under Linux's 4096


def path_segment(value: str) -> str:
    """A payload string as one file-name segment, one-to-one: everything but letters,
    digits and ``_.-~`` percent-encoded (``/`` and ``%`` included), and ``.``/``..``
    encoded whole, so "E1/S1" is ``E1%2FS1`` and "." is ``%2E``."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe="")


class FetchNoteAction(Action):
    description = "fetch linked note content from Suki's API and save it as files"
    options = {
        "links": Option(list, default=["contents"], template=False,
                        help=f"link relations to fetch: {', '.join(RELATIONS)}"),
        "directory": Option(str, required=True, template=False,
                            help="where files are saved (relative to actions.yaml)"),
        "path": Option(str, default=DEFAULT_PATH, help="file path template; sees `rel`"),
        "format": Option(str, default="json", choices=("json", "text"), template=False,
                         help="text: also save the note summary as plain text"),
    }

    @property
    def directory(self) -> Path:
        return (self.relay.base_dir / self.values["directory"]).resolve()

    def check(self) -> list[str]:
        bad = unknown_relations(self.values["links"])
        if bad:
            return [f"links: unknown relation(s) {', '.join(bad)}; expected any of "
                    f"{', '.join(RELATIONS)}"]
        return []

    def fetches(self) -> tuple[str, ...]:
        return tuple(self.values["links"])

    def target(self, delivery: Delivery, rel: str, event: dict[str, Any], root: Path) -> Path:
        """The file for one relation under ``root`` (the resolved `directory`), ``event``
        being the payload with every string encoded as a path segment; refuses anything
        that would leave ``root``, an empty or dot segment, and names too long for the
        filesystem (permanent: the same event renders the same path every time). Messages
        name no payload value."""
        context = delivery.context(rel=rel)
        context["event"] = event
        rendered = str(render_value(self.values["path"], context))
        parts = rendered.split("/")
        if (not rendered or "\x00" in rendered or "\\" in rendered or rendered.startswith("/")
                or any(p in ("", ".", "..") for p in parts)):
            raise PermanentError(f"path for {rel!r} refused: it would leave the directory or "
                                 "has an empty or dot segment")
        if any(len(p.encode()) > NAME_MAX for p in parts):
            raise PermanentError(f"path for {rel!r} refused: a file name is longer than "
                                 f"{NAME_MAX} bytes")
        path = (root / Path(*parts)).resolve()
        if not path.is_relative_to(root):
            raise PermanentError(f"path for {rel!r} refused: it would leave the directory")
        if len(str(path).encode()) > PATH_MAX:
            raise PermanentError(f"path for {rel!r} refused: longer than {PATH_MAX} bytes")
        return path

    def files(self, delivery: Delivery) -> dict[str, Path]:
        event, root = map_strings(delivery.event, path_segment), self.directory
        return {rel: self.target(delivery, rel, event, root) for rel in self.values["links"]}

    def deliver(self, delivery: Delivery) -> str | None:
        files = self.files(delivery)  # every path checked before anything is written
        if self.values["format"] == "text":  # an empty note is not saved as the note
            for rel in files.keys() & set(CONTENT_RELATIONS):
                note_text(delivery.fetched[rel], empty_ok=False)
        for rel, path in files.items():
            document = delivery.fetched[rel]
            write_private(path, json.dumps(document, ensure_ascii=False, indent=2).encode(),
                          self.directory)
            if self.values["format"] == "text" and rel in CONTENT_RELATIONS:
                write_private(path.with_suffix(".txt"), note_text(document).encode(),
                              self.directory)
        return f"saved {len(files)} file(s)"

    def preview(self, delivery: Delivery) -> dict[str, Any]:
        return {"files": {rel: str(path) for rel, path in self.files(delivery).items()}}


def write_private(path: Path, data: bytes, root: Path) -> None:
    """Atomically replace ``path`` with ``data``, owner-only; ``root`` and every folder
    below it on the way 0700 (created so, or tightened if they exist looser)."""
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_folder(root)
        folder = root
        for part in path.parent.relative_to(root).parts:
            folder = folder / part
            folder.mkdir(mode=0o700, exist_ok=True)
            _private_folder(folder)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise PermanentError("file name too long for the filesystem") from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _private_folder(folder: Path) -> None:
    """Owner-only, whoever made the folder and however: notes are PHI."""
    mode = stat.S_IMODE(os.stat(folder).st_mode)
    if mode & 0o077:
        try:
            os.chmod(folder, 0o700)
        except PermissionError:
            raise PermanentError("a folder under `directory` is open to other users and "
                                 "cannot be made owner-only") from None
