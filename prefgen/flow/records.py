"""Step 1 of the flow: stream SFT records from a JSON array or a JSON Lines file.

Neither format is ever loaded whole: JSON arrays are parsed incrementally with ijson and
JSON Lines are read line by line, so memory does not grow with the file. A UTF-8 byte-order
mark is skipped, as the JSON standard allows; a byte that is not UTF-8 is named by line and byte.
"""

from __future__ import annotations

import codecs
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
BOM = codecs.BOM_UTF8


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


def skip_bom(handle: IO[bytes]) -> int:
    """Move past a UTF-8 byte-order mark, which the JSON standard lets a reader ignore (some
    Windows tools write one); return the offset of the first byte of JSON."""
    if handle.read(len(BOM)) == BOM:
        return len(BOM)
    handle.seek(0)
    return 0


def encoding_error(path: Path, line: int, data: bytes, offset: int) -> InputError | None:
    """An InputError naming where `data` (line `line`, starting at byte `offset` of the file)
    stops being UTF-8, or None when it is valid UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _not_utf8(path, line, exc.start, offset + exc.start, exc)
    return None


def _not_utf8(path: Path, line: int, column: int, offset: int, exc: UnicodeDecodeError) -> InputError:
    return InputError(
        f"{path}: line {line}: not valid UTF-8 at byte {column} of the line (byte {offset} of the file): {exc.reason}",
        hint="prefgen reads UTF-8 (as JSON requires): convert the file, e.g. with iconv -t UTF-8",
    )


class CheckedReader:
    """A binary file for ijson that fails, naming line and byte, at the first byte that is not
    UTF-8 (ijson itself would only say `lexical error`). It decodes as it goes, never whole."""

    def __init__(self, path: Path, handle: IO[bytes]):
        self.path, self.handle = path, handle
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.offset = handle.tell()  # bytes handed out so far, counted from the file's start
        self.line, self.line_start = 1, 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        if size == 0:
            return data
        pending = self.decoder.getstate()[0]  # the start of a character split across reads
        try:
            self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise self._error(pending + data, self.offset - len(pending), exc) from exc
        newlines = data.count(b"\n")
        if newlines:
            self.line += newlines
            self.line_start = self.offset + data.rindex(b"\n") + 1
        self.offset += len(data)
        return data

    def _error(self, data: bytes, base: int, exc: UnicodeDecodeError) -> InputError:
        before = data[: exc.start]
        line, line_start = self.line + before.count(b"\n"), self.line_start
        if b"\n" in before:
            line_start = base + before.rindex(b"\n") + 1
        offset = base + exc.start
        return _not_utf8(self.path, line, offset - line_start, offset, exc)


def _first_char(handle: IO[bytes]) -> bytes:
    while True:
        block = handle.read(4096)
        if not block:
            return b""
        stripped = block.lstrip()
        if stripped:
            return stripped[:1]


def array_items(path: Path, handle: IO[bytes]) -> Iterator[object]:
    """The items of a JSON array, streamed; InputError names a malformed item or a byte that is not UTF-8."""
    index = 0
    try:
        for item in ijson.items(CheckedReader(path, handle), "item", use_float=True):
            yield item
            index += 1
    except ijson.JSONError as exc:
        raise InputError(
            f"{path}: malformed JSON at record {index}: {exc}",
            hint="check the file with `python -m json.tool`",
        ) from exc


def _line_items(path: Path, handle: IO[bytes], offset: int) -> Iterator[object]:
    index = 0
    for line_number, line in enumerate(handle, start=1):
        start, offset = offset, offset + len(line)
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise encoding_error(path, line_number, line, start) or InputError(
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
        start = skip_bom(handle)
        first = _first_char(handle)
        handle.seek(start)
        if first == b"":
            raise InputError(f"{path}: the data file is empty", hint="give a JSON array or JSON Lines file")
        if first == b"[":
            items = array_items(path, handle)
        elif first == b"{":
            items = _line_items(path, handle, start)
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
