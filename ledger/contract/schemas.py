"""The Avro event contract: every shipped version of ``task_event.vN.avsc`` and its fingerprint.

The newest version is the writer schema; every older one stays readable so that a log written
by an earlier release decodes with this one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # ledger/, where a wheel carries the schemas
# An installed wheel carries the contract inside the package (see pyproject.toml); a source
# checkout, editable installs included, reads the top-level schemas/ directory.
_SEARCH_PATH = (_PACKAGE_DIR / "_schemas", _PACKAGE_DIR.parent / "schemas")
_FILE_PATTERN = re.compile(r"^task_event\.v(\d+)\.avsc$")


class SchemaNotFound(RuntimeError):
    """The event contract files are missing from the installation."""


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    version: int
    path: Path
    source: dict[str, Any]
    # Parsed with logical types stripped: the bytes and the canonical form are the same, and
    # decoding skips the UUID/datetime conversions that would cost more than the record itself.
    parsed: dict[str, Any]
    fingerprint: bytes  # CRC-64-AVRO of the parsing canonical form, little-endian, as on the wire


def schema_dir() -> Path:
    for candidate in _SEARCH_PATH:
        if any(candidate.glob("task_event.v*.avsc")):
            return candidate
    raise SchemaNotFound(
        "the event schemas (task_event.vN.avsc) are not installed; looked in "
        + ", ".join(str(p) for p in _SEARCH_PATH)
    )


@cache
def versions() -> tuple[SchemaVersion, ...]:
    """Every shipped schema version, oldest first."""
    found = []
    for path in schema_dir().iterdir():
        match = _FILE_PATTERN.match(path.name)
        if match:
            found.append(_load(int(match.group(1)), path))
    return tuple(sorted(found, key=lambda v: v.version))


def current() -> SchemaVersion:
    return versions()[-1]


def _load(version: int, path: Path) -> SchemaVersion:
    source = json.loads(path.read_text())
    canonical = to_parsing_canonical_form(parse_schema(source))
    return SchemaVersion(
        version=version,
        path=path,
        source=source,
        parsed=parse_schema(_without_logical_types(source)),
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
    )


def _without_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical_types(v) for v in node]
    return node
