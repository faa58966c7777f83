"""Step 1 of the flow: stream SFT records from a JSON array or a JSON Lines file.

Neither format is ever loaded whole: JSON arrays are parsed incrementally with ijson and
JSON Lines are read line by line, so memory does not grow with the file.
"""

from __future__ import annotations

import hashlib
from itertools import islice
from pathlib import Path
from typing import IO, Iterable, Iterator

import ijson
import orjson

from prefgen.errors import InputError
from prefgen.units import Record

REQUIRED_FIELDS = ("instruction", "output")
STRING_FIELDS = ("instruction", "input", "output")


def record_hash(fields: dict) -> str:
    """A stable content hash: the same record hashes the same in .json and .jsonl files."""
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:32]


def validate(path: Path, index: int, fields: object) -> Record:
    """Check one parsed record and wrap it; raise InputError naming file, record and field."""
    where = f"{path}: record {index}"
    if not isinstance(fields, dict):
        raise InputError(
            f"{where} is a JSON {type(fields).__name__}, not an object",
            hint="each record must be an object with instruction, input and output",
        )
    for name in REQUIRED_FIELDS:
        if name not in fields:
            raise InputError(f"{where} has no field {name!r}", hint="add the field or remove the record")
    for name in STRING_FIELDS:
        value = fields.get(name)
        if name in fields and value is not None and not isinstance(value, str):
            raise InputError(
                f"{where}: field {name!r} is a {type(value).__name__}, not a string",
                hint="every instruction, input and output must be a JSON string",
            )
    for name in REQUIRED_FIELDS:
        if fields[name] is None or not fields[name].strip():
            raise InputError(f"{where}: field {name!r} is empty", hint="fix or remove the record")
    return Record(index=index, fields=fields, hash=record_hash(fields))


def _first_char(handle: IO[bytes]) -> bytes:
    while True:
        block = handle.read(4096)
        if not block:
            return b""
        stripped = block.lstrip()
        if stripped:
            return stripped[:1]


def _array_items(path: Path, handle: IO[bytes]) -> Iterator[object]:
    index = 0
    try:
        for item in ijson.items(handle, "item", use_float=True):
            yield item
            index += 1
    except ijson.JSONError as exc:
        raise InputError(
            f"{path}: malformed JSON at record {index}: {exc}",
            hint="check the file with `python -m json.tool`",
        ) from exc


def _line_items(path: Path, handle: IO[bytes]) -> Iterator[object]:
    index = 0
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(
                f"{path}: malformed JSON at record {index} (line {line_number}): {exc}",
                hint="each line of a .jsonl file must be one complete JSON object",
            ) from exc
        yield item
        index += 1


def iter_records(path: str | Path, limit: int = 0) -> Iterator[Record]:
    """Yield validated records in file order; `limit` > 0 stops after that many."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such data file", hint="check --sft-data") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read the data file: {exc.strerror}") from exc
    with handle:
        first = _first_char(handle)
        handle.seek(0)
        if first == b"":
            raise InputError(f"{path}: the data file is empty", hint="give a JSON array or JSON Lines file")
        if first == b"[":
            items = _array_items(path, handle)
        elif first == b"{":
            items = _line_items(path, handle)
        else:
            raise InputError(
                f"{path}: not a JSON array or JSON Lines file (starts with {first!r})",
                hint="prefgen reads Alpaca records: a JSON array (.json) or one object per line (.jsonl)",
            )
        count = 0
        for index, item in enumerate(islice(items, limit or None)):
            yield validate(path, index, item)
            count += 1
        if count == 0:
            raise InputError(f"{path}: the data file holds no records")


def require_string_field(records: Iterable[Record], name: str, path: str | Path, hint: str = "") -> Iterator[Record]:
    """Pass records through, refusing one whose field `name` is missing or not a string."""
    for record in records:
        if not isinstance(record.fields.get(name), str):
            raise InputError(f"{path}: record {record.index}: field {name!r} is missing or not a string", hint=hint)
        yield record


def count_records(path: str | Path, limit: int = 0) -> int:
    """Validate every record (up to `limit`) in one streaming pass and return how many there are."""
    return sum(1 for _ in iter_records(path, limit))
