"""Task-event readers compiled from the Avro schemas: a record's body straight into its event's fields.

fastavro's reader walks the schema for every record it reads, which makes decoding the largest
cost of a replay (about 8 µs of a ``ResponseSubmitted``). The event contract is fixed per schema
version, so the walk can be done once: ``compile_reader`` turns a writer schema (resolved to the
reader schema) into Python source with one straight-line function per payload type, and the
record decodes in a third of the time, into the flat fields an event class takes (envelope and
payload together). fastavro stays the reference: ``tests/test_avro.py`` checks that both give the
same fields for every event, and that these readers never accept bytes fastavro rejects.

Only what the event schemas use is supported: records of primitive fields, enums, and unions of
``null`` and one other type, under the envelope's ``payload`` union of records. A schema outside
that raises ``Unsupported`` (the codec then reads that version with fastavro). Resolution covers
what the schema versions do between themselves: a reader field the writer lacks takes its default,
a writer field the reader lacks is read and dropped.

Bytes that do not decode raise ``IndexError``, ``ValueError`` (``UnicodeDecodeError`` among them)
or ``struct.error``; the codec reports all of them as a corrupt record. Stricter than fastavro where
the Avro specification allows it: a boolean is the byte 0 or 1; a union or enum index is one byte
of a non-negative index in range (fastavro reads -1 as the last symbol, and accepts padded varints).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from struct import Struct
from sys import intern
from typing import Any

PAYLOAD = "payload"
_DOUBLE = Struct("<d")
_FLOAT = Struct("<f")

# (data, start) -> (payload record name, flat fields, end)
Reader = Callable[[bytes, int], tuple[str, dict[str, Any], int]]


class Unsupported(ValueError):
    """The schema uses Avro the compiled readers do not cover."""


def compile_reader(writer: dict[str, Any], reader: dict[str, Any], shared: Collection[str] = ()) -> Reader:
    """A reader of bodies written with ``writer`` giving the fields of ``reader``.

    Both are parsed event schemas (``fastavro.parse_schema``). String fields named in ``shared``
    are interned: values that repeat across tasks then cost one copy in memory.
    """
    source = _Source(frozenset(shared))
    envelope = [f for f in writer["fields"] if f["name"] != PAYLOAD]
    reader_fields = {f["name"]: f for f in reader["fields"]}
    if [f["name"] for f in writer["fields"]][-1:] != [PAYLOAD] or [f["name"] for f in envelope] != [
            f["name"] for f in reader["fields"] if f["name"] != PAYLOAD]:
        raise Unsupported("the envelope differs between the schemas, or its payload is not the last field")
    writer_branches = _branches(writer)
    reader_branches = {_name(b): b for b in _branches(reader)}
    lines = ["def read(data, pos):", "    end = len(data)"]
    for field in envelope:
        _same_type(field, reader_fields[field["name"]])
        lines += source.field(field["name"], field["type"], "    ")
    if len(writer_branches) > 63:
        raise Unsupported("a payload union of more than 63 records")
    lines += source.index("branch", "    ")
    for index, branch in enumerate(writer_branches):
        name = _name(branch)
        target = reader_branches.get(name)
        if target is None:
            raise Unsupported(f"{name} is written but not read")
        lines.append(f"    {'if' if index == 0 else 'elif'} branch == {2 * index}:")
        lines += source.record(branch, target, [f["name"] for f in envelope], "        ")
    lines += ["    else:", "        raise ValueError(f'payload union index byte {branch} out of range')",
              "    return name, fields, pos"]
    namespace = dict(source.constants, _DOUBLE=_DOUBLE, _FLOAT=_FLOAT, intern=intern)
    exec(compile("\n".join(lines), f"<avro reader {writer.get('name')}>", "exec"), namespace)  # noqa: S102
    return namespace["read"]


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    payload = next(f for f in schema["fields"] if f["name"] == PAYLOAD)["type"]
    if not isinstance(payload, list) or not all(isinstance(b, dict) and b.get("type") == "record" for b in payload):
        raise Unsupported("the payload is not a union of records")
    return payload


def _name(record: dict[str, Any]) -> str:
    return record["name"]


def _same_type(written: dict[str, Any], read: dict[str, Any]) -> None:
    if _plain(written["type"]) != _plain(read["type"]):
        raise Unsupported(f"field {written['name']} changed type between the schemas")


def _plain(schema: Any) -> Any:
    """A type without its documentation, to compare two versions of a field."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k not in ("doc", "default")}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


class _Source:
    """Python source for reading fields, one line per step; constants go to the reader's namespace."""

    def __init__(self, shared: frozenset[str]) -> None:
        self.shared = shared
        self.constants: dict[str, Any] = {}

    def record(self, written: dict[str, Any], read: dict[str, Any], envelope: list[str], indent: str) -> list[str]:
        read_fields = {f["name"]: f for f in read["fields"]}
        lines = [f"{indent}name = {self._constant(_name(read))}"]
        kept: list[str] = []
        for field in written["fields"]:
            target = read_fields.get(field["name"])
            if target is None:
                lines += self.field("_dropped", field["type"], indent)
                continue
            _same_type(field, target)
            lines += self.field(field["name"], field["type"], indent)
            kept.append(field["name"])
        items = [f"{name!r}: {_variable(name)}" for name in envelope]
        for field in read["fields"]:  # in the reader's order, as fastavro gives them
            if field["name"] in kept:
                items.append(f"{field['name']!r}: {_variable(field['name'])}")
            elif "default" in field:
                items.append(f"{field['name']!r}: {self._constant(field['default'])}")
            else:
                raise Unsupported(f"{_name(read)}.{field['name']} is read but neither written nor defaulted")
        lines.append(f"{indent}fields = {{{', '.join(items)}}}")
        return lines

    def field(self, name: str, schema: Any, indent: str) -> list[str]:
        target = _variable(name)
        if isinstance(schema, list):
            return self._optional(name, target, schema, indent)
        if isinstance(schema, dict):
            if schema.get("type") == "enum":
                if len(schema["symbols"]) > 63:
                    raise Unsupported(f"field {name}: an enum of more than 63 symbols")
                symbols = self._constant(tuple(schema["symbols"]))
                return self.index("index", indent) + [
                    f"{indent}if index & 1 or index >= {2 * len(schema['symbols'])}:",
                    f"{indent}    raise ValueError(f'enum index byte {{index}} out of range')",
                    f"{indent}{target} = {symbols}[index >> 1]",
                ]
            schema = schema.get("type")
        return self._primitive(name, target, schema, indent)

    def _optional(self, name: str, target: str, union: list[Any], indent: str) -> list[str]:
        if len(union) != 2 or "null" not in union:
            raise Unsupported(f"field {name}: only unions of null and one type are supported")
        present = union.index("null") ^ 1
        inner = self.field(name, union[present], indent + "    ")
        return self.index("index", indent) + [
            f"{indent}if index == {2 * present}:", *inner,
            f"{indent}elif index == {2 * (present ^ 1)}:", f"{indent}    {target} = None",
            f"{indent}else:", f"{indent}    raise ValueError(f'union index byte {{index}} out of range')",
        ]

    def _primitive(self, name: str, target: str, kind: Any, indent: str) -> list[str]:
        if kind in ("long", "int"):
            return self.long(target, indent)
        if kind == "string":
            value = "intern(data[pos:pos + size].decode())" if name in self.shared else "data[pos:pos + size].decode()"
            return self.long("size", indent) + [
                f"{indent}if size < 0 or pos + size > end:",
                f"{indent}    raise ValueError(f'string of {{size}} bytes at {{pos}} of {{end}}')",
                f"{indent}{target} = {value}",
                f"{indent}pos += size",
            ]
        if kind == "boolean":
            return [
                f"{indent}{target} = data[pos]",
                f"{indent}if {target} > 1:",
                f"{indent}    raise ValueError(f'boolean byte {{{target}}}')",
                f"{indent}{target} = {target} == 1",
                f"{indent}pos += 1",
            ]
        if kind in ("double", "float"):
            struct, size = ("_DOUBLE", 8) if kind == "double" else ("_FLOAT", 4)
            return [f"{indent}({target},) = {struct}.unpack_from(data, pos)", f"{indent}pos += {size}"]
        if kind == "null":
            return [f"{indent}{target} = None"]
        raise Unsupported(f"field {name}: type {kind!r} is not supported")

    @staticmethod
    def long(target: str, indent: str) -> list[str]:
        """A zig-zag varint, inline: a timestamp takes six bytes, and a call per field costs more than the loop."""
        return [
            f"{indent}{target} = data[pos]",
            f"{indent}pos += 1",
            f"{indent}if {target} > 0x7F:",
            f"{indent}    {target} &= 0x7F",
            f"{indent}    shift = 7",
            f"{indent}    while True:",
            f"{indent}        byte = data[pos]",
            f"{indent}        pos += 1",
            f"{indent}        {target} |= (byte & 0x7F) << shift",
            f"{indent}        if byte < 0x80:",
            f"{indent}            break",
            f"{indent}        shift += 7",
            f"{indent}        if shift > 63:",
            f"{indent}            raise ValueError('varint longer than 10 bytes')",
            f"{indent}{target} = ({target} >> 1) ^ -({target} & 1)",
        ]

    @staticmethod
    def index(target: str, indent: str) -> list[str]:
        """A union branch or enum symbol index, left zig-zag encoded (index i is the byte 2i): every
        schema here has fewer than 64 of them, so one byte, and any other byte is out of range."""
        return [f"{indent}{target} = data[pos]", f"{indent}pos += 1"]

    def _constant(self, value: Any) -> str:
        if value is None or isinstance(value, (bool, int, float)):
            return repr(value)
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name


def _variable(field: str) -> str:
    return f"f_{field}"
