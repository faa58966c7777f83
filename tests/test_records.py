import tracemalloc

import pytest
from conftest import SAMPLE, write_records

from prefgen.errors import InputError
from prefgen.records import count_records, iter_records, record_hash


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
