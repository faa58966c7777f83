import tracemalloc

import pytest
from conftest import SAMPLE, generate_args, run_cli, write_records

from prefgen.errors import InputError
from prefgen.flow.records import count_records, iter_records, record_hash


def test_sample_is_streamed_with_extra_fields_kept():
    records = list(iter_records(SAMPLE))
    assert len(records) == 56
    assert records[0].index == 0 and records[55].index == 55
    assert records[0].fields["db_id"] == "department_store"
    assert records[0].input == ""
    assert records[0].output.startswith("SELECT T1.address_details")


def test_json_and_jsonl_give_the_same_records_and_hashes(tmp_path):
    rows = [
        {"instruction": "Q?", "input": "ctx", "output": "SELECT 1", "db_id": "x", "n": 1.5},
        {"instruction": "R", "output": "SELECT 2"},
    ]
    as_json = list(iter_records(write_records(tmp_path / "a.json", rows)))
    as_jsonl = list(iter_records(write_records(tmp_path / "a.jsonl", rows, jsonl=True)))
    assert [r.hash for r in as_json] == [r.hash for r in as_jsonl] == [record_hash(r) for r in rows]
    assert as_json[0].fields["n"] == 1.5 and as_json[1].input == ""


def test_limit_stops_early(tmp_path):
    assert count_records(SAMPLE, limit=5) == 5


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": \n', "malformed JSON at record 1 (line 2)"),
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c"', "malformed JSON at record 1"),
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', "record 1 has no field 'output'"),
        ('[{"output": "b"}]', "record 0 has no field 'instruction'"),
        ('[{"instruction": "a", "output": 3}]', "record 0: field 'output' is a int, not a string"),
        ('[{"instruction": "a", "input": ["x"], "output": "b"}]', "record 0: field 'input' is a list, not a string"),
        ('[{"instruction": "a", "output": "  "}]', "record 0: field 'output' is empty"),
        ('[{"instruction": "a", "output": "b"}, 7]', "record 1 is a JSON int, not an object"),
        ("", "the data file is empty"),
        ("[]", "holds no records"),
        ("hello", "not a JSON array or JSON Lines file"),
    ],
)
def test_bad_input_names_file_record_and_field(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        count_records(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_large_json_array_is_streamed_with_bounded_memory(tmp_path):
    """A ~60 MB array: reading it whole would need far more than the 10 MB allowed here."""
    path = tmp_path / "big.json"
    record = b'{"instruction": "' + b"x" * 3000 + b'", "input": "", "output": "SELECT 1", "db_id": "d"}'
    with open(path, "wb") as handle:
        handle.write(b"[")
        for i in range(20000):
            handle.write(record if i == 0 else b"," + record)
        handle.write(b"]")
    assert path.stat().st_size > 60_000_000
    tracemalloc.start()
    count = count_records(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 20000
    assert peak < 10_000_000, f"peak {peak} bytes: the array was not streamed"


ROWS = [
    {"instruction": "Qué año?", "input": "", "output": "SELECT 1", "db_id": "x"},
    {"instruction": "R", "output": "SELECT 2"},
]


@pytest.mark.parametrize("jsonl", [False, True], ids=["json", "jsonl"])
def test_a_utf8_byte_order_mark_is_skipped_as_json_allows(tmp_path, jsonl):
    plain = write_records(tmp_path / "plain.json", ROWS, jsonl=jsonl)
    marked = tmp_path / "marked.json"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert [(r.fields, r.hash) for r in iter_records(marked)] == [(r.fields, r.hash) for r in iter_records(plain)]


def test_invalid_utf8_in_a_jsonl_line_is_named_as_an_encoding_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n\n{"instruction": "a\xff", "output": "b"}\n')
    with pytest.raises(InputError) as info:
        count_records(path)
    assert str(info.value) == (
        f"{path}: line 3: not valid UTF-8 at byte 18 of the line (byte 55 of the file): invalid start byte"
    )
    assert "UTF-8" in info.value.hint


def test_invalid_utf8_in_a_json_array_is_named_by_line_and_byte(tmp_path):
    path = tmp_path / "bad.json"
    # "é" is valid UTF-8 (two bytes): only the \xff after it is not
    path.write_bytes(b'[{"instruction": "a", "output": "b"},\n {"instruction": "\xc3\xa9a\xff", "output": "b"}]')
    with pytest.raises(InputError) as info:
        count_records(path)
    assert str(info.value) == (
        f"{path}: line 2: not valid UTF-8 at byte 21 of the line (byte 59 of the file): invalid start byte"
    )


def test_utf8_checks_of_a_streamed_array_see_characters_split_between_reads(tmp_path):
    """ijson reads 64 KB at a time: characters cut at a read's end are fine, and a bad byte far
    into the file is named at its true offset."""
    path = tmp_path / "big.json"
    record = '{"instruction": "' + "é" * 9999 + '", "output": "SELECT 1"}'  # odd lengths: cuts land mid-character
    good = ("[" + ",\n".join([record] * 20) + "]").encode()
    path.write_bytes(good)
    assert count_records(path) == 20
    bad_at = good.index(b"\xc3", 300_000)
    path.write_bytes(good[:bad_at] + b"\xc3(" + good[bad_at + 2 :])
    with pytest.raises(InputError) as info:
        count_records(path)
    line = good[:bad_at].count(b"\n") + 1
    column = bad_at - (good.rindex(b"\n", 0, bad_at) + 1)
    assert f": line {line}: not valid UTF-8 at byte {column} of the line (byte {bad_at} of the file)" in str(info.value)


def test_the_cli_names_an_encoding_error_without_a_traceback(workdir, tiny_model):
    data = workdir / "data.jsonl"
    data.write_bytes(b'{"instruction": "a", "output": "SELECT 1"}\n{"instruction": "\xe9t\xe9", "output": "b"}\n')
    result = run_cli(generate_args(tiny_model, data, workdir / "pairs.jsonl"), expect=1)  # raises on a traceback
    assert result.output.startswith(f"Error: {data}: line 2: not valid UTF-8 at byte 17 of the line")
    assert "Hint: prefgen reads UTF-8" in result.output


def test_the_cli_reads_a_json_file_with_a_byte_order_mark_like_one_without(workdir, tiny_model):
    plain = write_records(workdir / "plain.json", ROWS)
    marked = workdir / "marked.json"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    run_cli(generate_args(tiny_model, plain, workdir / "plain.jsonl", max_samples=2))
    run_cli(generate_args(tiny_model, marked, workdir / "marked.jsonl", max_samples=2))
    assert (workdir / "marked.jsonl").read_bytes() == (workdir / "plain.jsonl").read_bytes()
