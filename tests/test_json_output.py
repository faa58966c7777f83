"""`--output pairs.json`: a JSON array, written from the JSON Lines journal kept beside it when the
run is complete, and by repair and merge; every other name stays JSON Lines, byte for byte."""

import json
import signal

import pytest
from conftest import generate_args, read_jsonl, run, run_cli

import prefgen.config
from prefgen.ledger.store import Ledger
from prefgen.paths import journal_of, ledger_of

FLAGS = dict(num_rejects=2, max_samples=4, batch_size=2)


def test_json_output_is_an_array_of_the_journals_lines(workdir, tiny_model, sample_data):
    out = workdir / "pairs.json"
    result = run_cli(generate_args(tiny_model, sample_data, out, **FLAGS))
    journal = workdir / "pairs.journal.jsonl"
    assert f"Output: {out} (a JSON array; its JSON Lines journal: {journal})" in result.output
    assert f"Ledger: {workdir / 'pairs.json.ledger.sqlite'}" in result.output
    items = json.loads(out.read_text(encoding="utf-8"))
    assert items == read_jsonl(journal) and len(items) == 8
    # the ledger commands, export and browse take either path
    assert ledger_of(out) == ledger_of(journal) == workdir / "pairs.json.ledger.sqlite"
    assert "8/8" in run_cli(["ledger", "status", str(out)]).output.replace(" ", "")
    run_cli(["ledger", "status", str(journal)])
    # a run with nothing left to do writes the array again (a deleted one comes back)
    out.unlink()
    assert "Nothing to do" in run_cli(generate_args(tiny_model, sample_data, out, **FLAGS)).output
    assert json.loads(out.read_text(encoding="utf-8")) == items


def test_jsonl_output_is_unchanged_and_the_journal_holds_the_same_bytes(workdir, tiny_model, sample_data):
    as_json, as_jsonl = workdir / "a.json", workdir / "b.jsonl"
    run_cli(generate_args(tiny_model, sample_data, as_json, **FLAGS))
    result = run_cli(generate_args(tiny_model, sample_data, as_jsonl, **FLAGS))
    assert f"Output: {as_jsonl}\n" in result.output
    assert journal_of(as_jsonl) == as_jsonl
    assert as_jsonl.read_bytes() == (workdir / "a.journal.jsonl").read_bytes()
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("b.")) == [
        "b.jsonl",
        "b.jsonl.ledger.sqlite",
        "b.jsonl.ledger.sqlite.lock",
        "b.jsonl.lock",
    ]


@pytest.mark.slow
def test_an_interrupted_run_writes_the_array_only_when_resumed_to_the_end(workdir, tiny_model, sample_data):
    reference = workdir / "reference.json"
    run_cli(generate_args(tiny_model, sample_data, reference, **FLAGS))
    out = workdir / "pairs.json"
    args = generate_args(tiny_model, sample_data, out, **FLAGS)
    code, _ = run(args, fault="after_commit:kill@2")
    assert code == -signal.SIGKILL
    assert not out.exists() and (workdir / "pairs.journal.jsonl").exists()
    code, output = run(args)
    assert code == 0, output
    assert out.read_bytes() == reference.read_bytes()
    assert json.loads(out.read_bytes()) == read_jsonl(workdir / "pairs.journal.jsonl")


def test_an_incomplete_run_says_where_its_lines_are(workdir, tiny_model, sample_data, monkeypatch):
    out = workdir / "pairs.json"
    monkeypatch.setenv("PREFGEN_FAULT", "generate:oom>0")  # no unit fits: all wait for the next run
    result = run_cli(generate_args(tiny_model, sample_data, out, **FLAGS), expect=3)
    journal = workdir / "pairs.journal.jsonl"
    assert f"Output: {journal} (JSON Lines; {out} is written once the run is complete)" in result.output
    assert not out.exists()


def test_repair_rebuilds_the_journal_and_the_array(workdir, tiny_model, sample_data):
    out = workdir / "pairs.json"
    run_cli(generate_args(tiny_model, sample_data, out, **FLAGS))
    journal = workdir / "pairs.journal.jsonl"
    expected_array, expected_journal = out.read_bytes(), journal.read_bytes()
    journal.write_bytes(expected_journal[:100])
    out.write_text("damaged")
    result = run_cli(["repair", "--output", str(out)])
    assert "8 lines" in result.output
    assert journal.read_bytes() == expected_journal and out.read_bytes() == expected_array
    journal.unlink()
    run_cli(["repair", "--output", str(journal)])  # the journal's path names the same run
    assert journal.read_bytes() == expected_journal and out.read_bytes() == expected_array
    assert not [p for p in workdir.iterdir() if p.name.endswith((".tmp", ".repair"))]


def test_merge_writes_one_array_in_sample_order(workdir, tiny_model, sample_data):
    single = workdir / "single.json"
    run_cli(generate_args(tiny_model, sample_data, single, **FLAGS))
    split = workdir / "split.json"
    for rank in (0, 1):
        run_cli(generate_args(tiny_model, sample_data, split, rank=rank, world_size=2, **FLAGS))
    assert json.loads((workdir / "split.rank1-of-2.json").read_bytes()) == read_jsonl(
        workdir / "split.rank1-of-2.journal.jsonl"
    )
    assert "8 lines" in run_cli(["merge", "--output", str(split), "--world-size", "2"]).output
    merged = json.loads(split.read_bytes())
    assert [(p["sample_index"], p["reject_index"]) for p in merged] == [(s, r) for s in range(4) for r in range(2)]

    def key(pair):
        return pair["sample_index"], pair["reject_index"]

    assert merged == sorted(json.loads(single.read_bytes()), key=key)  # the single run's lines, in sample order
    # export reads the array (a merged output has no journal)
    result = run_cli(["export", str(split), "--format", "trl", "--to", str(workdir / "exports")])
    assert "Wrote 8 pairs" in result.output


def test_a_json_output_begun_by_an_earlier_prefgen_as_json_lines_is_continued(
    workdir, tiny_model, sample_data, monkeypatch
):
    """Earlier prefgens appended JSON Lines to a .json output itself: such a run resumes, its
    file becomes the journal, and it ends with the array."""
    out, journal = workdir / "pairs.json", workdir / "pairs.journal.jsonl"
    with monkeypatch.context() as patch:  # the earlier rule: the output itself is the JSONL
        patch.setattr(prefgen.config, "journal_of", lambda path: path)
        run_cli(generate_args(tiny_model, sample_data, out, **{**FLAGS, "max_samples": 2}))
    earlier = out.read_bytes()
    assert len(read_jsonl(out)) == 4 and not journal.exists()
    result = run_cli(generate_args(tiny_model, sample_data, out, **FLAGS))
    assert f"{out} was begun as JSON Lines by an earlier prefgen: continuing it as {journal}" in result.output
    assert journal.read_bytes().startswith(earlier)
    assert json.loads(out.read_bytes()) == read_jsonl(journal) and len(read_jsonl(journal)) == 8
    ledger = Ledger(workdir / "pairs.json.ledger.sqlite", readonly=True)
    assert ledger.meta("output_path") == str(journal.resolve())
    ledger.close()
    reference = workdir / "reference.jsonl"
    run_cli(generate_args(tiny_model, sample_data, reference, **FLAGS))
    assert sorted(read_jsonl(journal), key=str) == sorted(read_jsonl(reference), key=str)
    assert "Nothing to do" in run_cli(generate_args(tiny_model, sample_data, out, **FLAGS)).output
