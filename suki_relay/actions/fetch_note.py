"""``fetch_note``: save the note (and friends) a success event links to, as files.

The documents are fetched by the core, exactly as for any action's ``fetch:`` (this type
asks for its ``links``), through the one Suki client: credentials go only to the
``suki:`` base URL. Files are written atomically (temporary file, fsync, rename),
owner-only (0600, folders 0700), at a path rendered from a template that may not leave
``directory``. Running the same delivery again overwrites the same files.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from ..action import Action, Delivery, Option
from ..errors import PermanentError
from ..fetch import CONTENT_RELATIONS, RELATIONS, note_text, unknown_relations

DEFAULT_PATH = ("{{ event.encounter_id | default('no-encounter', true) }}/"
                "{{ event.session_id }}/{{ rel }}.json")


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

    def target(self, delivery: Delivery, rel: str, suffix: str = "") -> Path:
        """The file for one relation; refuses anything that would leave `directory`."""
        rendered = str(self.render("path", delivery, rel=rel)) + suffix
        parts = PurePosixPath(rendered).parts
        if not rendered or "\x00" in rendered or "\\" in rendered or rendered.startswith("/") \
                or ".." in parts or not parts:
            raise PermanentError(f"path for {rel!r} refused: it would leave the directory")
        path = (self.directory / Path(*parts)).resolve()
        if not path.is_relative_to(self.directory):
            raise PermanentError(f"path for {rel!r} refused: it would leave the directory")
        return path

    def files(self, delivery: Delivery) -> dict[str, Path]:
        return {rel: self.target(delivery, rel) for rel in self.values["links"]}

    def deliver(self, delivery: Delivery) -> str | None:
        files = self.files(delivery)  # every path checked before anything is written
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
    """Atomically replace ``path`` with ``data``, owner-only; parents 0700 up to ``root``."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in reversed(path.parent.relative_to(root).parents[:-1] or []):
        (root / folder).mkdir(mode=0o700, exist_ok=True)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
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
