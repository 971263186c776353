"""Small fitted files shipped beside the code (JSON numbers, no image), pinned by hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def read_pinned_json(path: str | Path | None, shipped: Path, sha256: str,
                     error: type[Exception], what: str, rebuild: str):
    """The JSON in ``path``, or in ``shipped`` when ``path`` is None, which must then have
    the SHA-256 ``sha256`` (another file is refused, never silently used: rebuild it with
    the command ``rebuild``). Every failure raises ``error``, naming ``what`` the file is."""
    p = shipped if path is None else Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise error(f"the {what} {p} cannot be read: {e}") from e
    if path is None and hashlib.sha256(raw).hexdigest() != sha256:
        raise error(f"{p} does not match its pinned SHA-256; rebuild it with `{rebuild}`")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise error(f"{p} is not a {what}: {e}") from e


def write_pinned_json(path: Path, obj) -> str:
    """Write ``obj`` as the compact JSON :func:`read_pinned_json` reads (one line, no
    spaces, a final newline) and return its SHA-256, the hash to pin."""
    text = json.dumps(obj, separators=(",", ":")) + "\n"
    Path(path).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()
