"""`prefgen export`: turn a prefgen JSONL into the files LLaMA-Factory and TRL load.

Formats:
- `llamafactory`: alpaca-style pairs (`instruction`, `input`, `chosen`, `rejected`, plus
  `system` when there is one) and a `dataset_info.json` entry with `"ranking": true`;
- `sharegpt`: LLaMA-Factory's sharegpt preference format (`conversations`, `chosen`,
  `rejected` messages) and its `dataset_info.json` entry;
- `trl`: TRL's conversational preference format: `prompt` (the system and user turns, built
  exactly as `prefgen generate` built them), `chosen` and `rejected` (one assistant turn each).
- `kto`: TRL KTOTrainer's unpaired format: `prompt` (as `trl`), `completion` (one assistant
  turn) and `label`: each pair gives its chosen (label true) and its rejected (label false); a
  (prompt, completion) row already written is not written again (gold mode repeats the gold);
- `rewards`: graded rows for trainers that take a score: `prompt`, `completion`, `reward` (the
  execution reward of config.execution_reward: 1 correct, 0.1 executes but wrong, 0 fails; the
  gold is 1), `verdicts` (the execution verdict and its detail) and `source` (gold or model);
  deduplicated like `kto`. A side without a verdict (a run without --db-root) has no reward: it is
  skipped and counted. Each row carries `gold_suspect` (suspects.py: true when its sample's gold
  looks wrong, null when golds were not checked).

`--skip-suspect` leaves out the pairs flagged `gold_suspect` (a run with --gold-suspect keep),
counted, for every format.

LLaMA-Factory silently drops rows whose chosen or rejected is not a string; prefgen never
writes such a row: it skips it, counts it and says why.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import orjson

from prefgen.config import execution_reward
from prefgen.errors import InputError
from prefgen.files.atomic import atomic_write
from prefgen.flow.prompts import chat_messages
from prefgen.flow.records import array_items, encoding_error, skip_bom
from prefgen.paths import journal_of
from prefgen.units import Record


@dataclass
class ExportSummary:
    """What an export wrote and what it skipped (reason -> count)."""

    path: Path
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    dataset_info: Path | None = None


def read_pairs(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed line) of a JSONL file, streamed; a UTF-8 byte-order mark is skipped."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    with handle:
        offset = skip_bom(handle)
        for number, line in enumerate(handle, start=1):
            start, offset = offset, offset + len(line)
            if line.strip():
                try:
                    yield number, orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    error = encoding_error(path, number, line, start)
                    raise error or InputError(f"{path}: line {number} is not JSON: {exc}") from exc


def read_output(path: Path) -> Iterator[object]:
    """The pairs of a prefgen output: a JSON Lines file, or the JSON array of a `.json` output
    (its journal while the run has not written it yet)."""
    journal = journal_of(path)
    if not path.exists() and journal != path and journal.exists():
        path = journal
    if not _is_array(path):
        yield from (pair for _, pair in read_pairs(path))
        return
    with open(path, "rb") as handle:
        skip_bom(handle)
        yield from array_items(path, handle)


def _is_array(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            skip_bom(handle)
            return handle.read(4096).lstrip()[:1] == b"["
    except OSError:
        return False  # read_pairs names the problem


def problem(pair: object) -> str | None:
    """Why a pair cannot be exported, or None."""
    if not isinstance(pair, dict):
        return "not a JSON object"
    for name in ("instruction", "chosen", "rejected"):
        value = pair.get(name)
        if not isinstance(value, str):
            return f"{name} is {'missing' if value is None else 'not a string'}"
        if not value.strip():
            return f"{name} is empty"
    if pair.get("input") is not None and not isinstance(pair["input"], str):
        return "input is not a string"
    return None


def convert(pair: dict, fmt: str, system: str) -> dict:
    """One exported row."""
    record = Record(
        index=0,
        fields={"instruction": pair["instruction"], "input": pair.get("input") or "", "output": pair["chosen"]},
        hash="",
    )
    if fmt == "trl":
        return {
            "prompt": chat_messages(record, system),
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}],
        }
    if fmt == "sharegpt":
        row = {
            "conversations": [{"from": "human", "value": chat_messages(record)[-1]["content"]}],
            "chosen": {"from": "gpt", "value": pair["chosen"]},
            "rejected": {"from": "gpt", "value": pair["rejected"]},
        }
    else:
        row = {
            "instruction": record.instruction,
            "input": record.input,
            "chosen": pair["chosen"],
            "rejected": pair["rejected"],
        }
    if system:
        row["system"] = system
    return row


UNPAIRED_FORMATS = ("kto", "rewards")  # one row per side of a pair, not one per pair
NO_REWARD = "no verdict, so no reward (run with --db-root)"


def sides(pair: dict) -> list[tuple[str, float | None, dict, str]]:
    """A pair's two sides: (completion, reward, verdicts, source), chosen first. A gold-mode line
    has no `chosen_source` (the gold is chosen) and its rejected side's verdict in `verdict`;
    an on-policy line carries both sides' verdicts."""
    if pair.get("chosen_source", "gold") == "gold":
        chosen = (pair["chosen"], 1.0, {}, "gold")
    else:
        verdict = pair.get("chosen_verdict")
        chosen = (pair["chosen"], execution_reward(verdict), {"execution": verdict}, "model")
    if "rejected_verdict" in pair:
        verdict, detail = pair.get("rejected_verdict"), pair.get("rejected_detail") or ""
    else:
        verdict, detail = pair.get("verdict"), pair.get("verdict_detail") or ""
    rejected = (pair["rejected"], execution_reward(verdict), {"execution": verdict, "detail": detail}, "model")
    return [chosen, rejected]


def unpaired_rows(pair: dict, fmt: str, system: str, seen: set, skipped: Counter) -> Iterator[dict]:
    """The kto or rewards rows of one pair; `seen` holds the (prompt, completion) rows written."""
    prompt = convert(pair, "trl", system)["prompt"]
    prompt_key = orjson.dumps(prompt)
    for (text, reward, verdicts, source), label in zip(sides(pair), (True, False), strict=True):
        key = hashlib.sha256(prompt_key + b"\0" + text.encode()).digest()  # 32 bytes a row, not the texts
        if key in seen:
            skipped["already written (same prompt and completion)"] += 1
            continue
        if fmt == "rewards" and reward is None:
            skipped[NO_REWARD] += 1
            continue
        seen.add(key)
        row = {"prompt": prompt, "completion": [{"role": "assistant", "content": text}]}
        if fmt == "kto":
            row["label"] = label
        else:
            row.update(reward=reward, verdicts=verdicts, source=source, gold_suspect=pair.get("gold_suspect"))
        yield row


def dataset_info_entry(fmt: str, file_name: str, system: bool) -> dict:
    """The dataset_info.json entry LLaMA-Factory reads for this export."""
    if fmt == "sharegpt":
        columns = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}
        entry = {"file_name": file_name, "formatting": "sharegpt", "ranking": True, "columns": columns}
    else:
        columns = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}
        entry = {"file_name": file_name, "ranking": True, "columns": columns}
    if system:
        columns["system"] = "system"
    return entry


SUSPECT = "gold suspect (--skip-suspect)"


def export_pairs(
    source: str, fmt: str, to: str, name: str = "", system: str = "", skip_suspect: bool = False
) -> ExportSummary:
    """Write `source` (a prefgen output: JSON Lines, or a `.json` output's array) in `fmt` into
    directory `to`; with `skip_suspect`, without the pairs whose gold is flagged suspect."""
    directory = Path(to)
    directory.mkdir(parents=True, exist_ok=True)
    name = name or Path(source).name.split(".")[0]
    target = directory / f"{name}.jsonl"
    summary = ExportSummary(target)
    seen: set[bytes] = set()
    with atomic_write(target) as handle:
        for pair in read_output(Path(source)):
            reason = problem(pair) or (SUSPECT if skip_suspect and pair.get("gold_suspect") is True else None)
            if reason:
                summary.skipped[reason] += 1
                continue
            if fmt in UNPAIRED_FORMATS:
                rows = list(unpaired_rows(pair, fmt, system, seen, summary.skipped))
            else:
                rows = [convert(pair, fmt, system)]
            for row in rows:
                handle.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
            summary.written += len(rows)
    if fmt in ("llamafactory", "sharegpt"):
        summary.dataset_info = write_dataset_info(directory, name, dataset_info_entry(fmt, target.name, bool(system)))
    return summary


def write_dataset_info(directory: Path, name: str, entry: dict) -> Path:
    """Add (or replace) this dataset's entry in DIR/dataset_info.json, keeping the others."""
    path = directory / "dataset_info.json"
    info = orjson.loads(path.read_bytes()) if path.exists() else {}
    info[name] = entry
    with atomic_write(path) as handle:  # it holds the user's other datasets' entries too
        handle.write(orjson.dumps(info, option=orjson.OPT_INDENT_2))
    return path
