import importlib.util
import subprocess
import sys

import orjson
import pytest
from conftest import ROOT, generate_args, query, read_jsonl, run_cli, write_records


def ledger_rows(path, sql="select * from units order by sample_index, reject_index"):
    return query(path, sql)


def test_generate_writes_pairs_and_ledger(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    result = run_cli(generate_args(tiny_model, sample_data, out, num_rejects=3, max_samples=5))
    assert "Generated 15 units; 15/15 done" in result.output
    lines = read_jsonl(out)
    units = ledger_rows(str(out) + ".ledger.sqlite")
    assert len(units) == 15
    written = [u for u in units if u["status"] == "written"]
    assert len(lines) == len(written) == 15
    records = orjson.loads(sample_data.read_bytes())
    by_key = {(u["sample_index"], u["reject_index"]): u for u in written}
    for line in lines:
        unit = by_key[(line["sample_index"], line["reject_index"])]
        record = records[line["sample_index"]]
        assert line["chosen"] == record["output"] and line["instruction"] == record["instruction"]
        assert line["input"] == "" and line["db_id"] == "department_store"
        assert line["seed"] == 1234 + line["sample_index"] * 1000 + line["reject_index"] == unit["seed"]
        assert line["rejected"] == unit["sql"] and unit["line"].encode() == orjson.dumps(line) + b"\n"
        assert unit["prompt_tokens"] > 500 and 1 <= unit["new_tokens"] <= 8
    assert [(u["sample_index"], u["reject_index"]) for u in units] == [(s, r) for s in range(5) for r in range(3)]
    # orjson writes UTF-8 as is, not \u escapes
    assert "根据数据库".encode() in out.read_bytes()
    runs = ledger_rows(str(out) + ".ledger.sqlite", "select * from runs")
    assert len(runs) == 1 and runs[0]["status"] == "finished" and runs[0]["units_done"] == 15


def test_second_run_does_nothing_and_says_so(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, max_samples=3)
    run_cli(args)
    before = out.read_bytes()
    result = run_cli(args)
    assert "Nothing to do: all 6 units are already in the ledger" in result.output
    assert out.read_bytes() == before


def test_max_samples_can_be_raised_to_extend_a_run(workdir, tiny_model, sample_data):
    out, full = workdir / "pairs.jsonl", workdir / "full.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=2))
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=5, batch_size=3))
    assert "Generated 6 units; 10/10 done" in result.output
    run_cli(generate_args(tiny_model, sample_data, full, max_samples=5))
    # the same lines; their order differs, as units are grouped by prompt length per window
    assert sorted(out.read_bytes().splitlines()) == sorted(full.read_bytes().splitlines())


def test_resume_after_a_crash_mid_run_matches_an_uninterrupted_run(workdir, tiny_model, sample_data, monkeypatch):
    out, reference = workdir / "pairs.jsonl", workdir / "reference.jsonl"
    args = generate_args(tiny_model, sample_data, out, num_rejects=3, max_samples=5, dedup_rejects=True)
    monkeypatch.setenv("PREFGEN_FAULT", "after_jsonl_write:raise@3")
    with pytest.raises(RuntimeError, match="injected fault"):
        run_cli(args)
    # the batch whose lines were written but not committed was rolled back
    assert len(read_jsonl(out)) == 8
    monkeypatch.delenv("PREFGEN_FAULT")
    run_cli(args)
    run_cli(generate_args(tiny_model, sample_data, reference, num_rejects=3, max_samples=5, dedup_rejects=True))
    assert out.read_bytes() == reference.read_bytes()
    lines = read_jsonl(out)
    assert len({(line["sample_index"], line["reject_index"]) for line in lines}) == len(lines)
    units = ledger_rows(str(out) + ".ledger.sqlite")
    assert len(units) == 15
    assert sum(u["status"] == "written" for u in units) == len(lines)
    runs = ledger_rows(str(out) + ".ledger.sqlite", "select status from runs order by id")
    assert [r["status"] for r in runs] == ["failed", "finished"]


def test_greedy_with_several_rejects_records_duplicates(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    run_cli(
        generate_args(tiny_model, sample_data, out, num_rejects=3, max_samples=4, temperature=0, dedup_rejects=True)
    )
    units = ledger_rows(str(out) + ".ledger.sqlite")
    assert [u["status"] for u in units] == ["written", "duplicate", "duplicate"] * 4
    assert all(u["line"] is None for u in units if u["status"] == "duplicate")
    assert sorted((line["sample_index"], line["reject_index"]) for line in read_jsonl(out)) == [
        (s, 0) for s in range(4)
    ]


def test_without_dedup_duplicates_are_written(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, num_rejects=2, max_samples=2, temperature=0))
    lines = read_jsonl(out)
    assert len(lines) == 4 and lines[0]["rejected"] == lines[1]["rejected"]


@pytest.mark.parametrize(
    "flag, value, named",
    [
        ("seed", 7, "seed (ledger: 1234, now: 7)"),
        ("temperature", 0.2, "temperature"),
        ("num_rejects", 3, "num_rejects"),
        # a larger --max-new-tokens is accepted, a smaller one refused by its own message: test_raise_cap.py
        ("system", "Be brief.", "system"),
    ],
)
def test_changed_settings_are_refused_by_name(workdir, tiny_model, sample_data, flag, value, named):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=2))
    before = out.read_bytes()
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=2, **{flag: value}), expect=1)
    assert result.output.startswith("Error: ") and "was started with other settings" in result.output
    assert named in result.output and "Hint:" in result.output
    assert out.read_bytes() == before


def test_batch_size_device_and_max_samples_may_change(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=2))
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=3, batch_size=1, device="cuda"))
    assert "Generated 2 units; 6/6 done" in result.output


def test_lora_adapter_is_applied(workdir, tiny_model, sample_data):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(workdir / "adapter")
    base, adapted = workdir / "base.jsonl", workdir / "adapted.jsonl"
    run_cli(generate_args(tiny_model, sample_data, base, max_samples=2))
    run_cli(generate_args(tiny_model, sample_data, adapted, max_samples=2, adapter_path=workdir / "adapter"))
    assert [line["rejected"] for line in read_jsonl(base)] != [line["rejected"] for line in read_jsonl(adapted)]
    events = ledger_rows(str(adapted) + ".ledger.sqlite", "select detail from events where kind = 'model_loaded'")
    assert orjson.loads(events[0]["detail"])["adapter_merged"] is True


def test_a_missing_adapter_is_refused_before_anything_is_made(workdir, tiny_model, sample_data):
    # it used to warn and generate with the base model: a GPU-day of the wrong rejects
    out = workdir / "pairs.jsonl"
    before = sorted(workdir.iterdir())
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=2, adapter_path=workdir / "nope"), 1)
    assert "Error: --adapter-path" in result.output and "nope: no such adapter directory" in result.output
    assert sorted(workdir.iterdir()) == before  # no output, ledger or lock file


def test_tokenizer_without_chat_template_falls_back_with_a_warning(workdir, tiny_model, sample_data):
    import shutil

    plain = workdir / "plain-model"
    shutil.copytree(tiny_model, plain)
    config = orjson.loads((plain / "tokenizer_config.json").read_bytes())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_bytes(orjson.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    result = run_cli(generate_args(plain, sample_data, workdir / "pairs.jsonl", max_samples=1))
    assert "Warning: the tokenizer has no chat template" in result.output


def test_prompt_is_instruction_newline_input_in_the_chat_template(tiny_model):
    from transformers import AutoTokenizer

    from prefgen.flow.prompts import PromptBuilder
    from prefgen.flow.records import validate

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    record = validate("mem", 0, {"instruction": "Answer.", "input": "Q: how many?", "output": "SELECT 1"})
    assert PromptBuilder(tokenizer, system="Be brief.")(record) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nAnswer.\nQ: how many?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_num_rejects_of_1000_is_refused(workdir, tiny_model, sample_data):
    result = run_cli(generate_args(tiny_model, sample_data, workdir / "p.jsonl", num_rejects=1000), expect=1)
    assert "Error: --num-rejects must be between 1 and 999" in result.output


BAD_INPUTS = [
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\nnot json\n', "bad.jsonl: malformed JSON at record 1 (line 2)"),
    ("bad.json", '[{"instruction": "a"}]', "bad.json: record 0 has no field 'output'"),
    ("bad.json", '[{"instruction": "a", "output": "b"}, {"output": "b"}]', "record 1 has no field 'instruction'"),
    ("bad.json", '[{"instruction": 5, "output": "b"}]', "record 0: field 'instruction' is a int, not a string"),
    ("bad.json", "", "bad.json: the data file is empty"),
]


@pytest.mark.parametrize("name, content, message", BAD_INPUTS)
def test_bad_data_gives_an_error_and_touches_nothing(workdir, tiny_model, sample_data, name, content, message):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=1))
    ledger = workdir / "pairs.jsonl.ledger.sqlite"
    bad = workdir / name
    bad.write_text(content)
    before = (out.read_bytes(), ledger.read_bytes())
    other = workdir / "other.jsonl"
    result = run_cli(generate_args(tiny_model, bad, other), expect=1)
    assert result.output.startswith("Error: ") and message in result.output
    assert "Traceback" not in result.output
    assert (out.read_bytes(), ledger.read_bytes()) == before
    assert not other.exists() or other.read_bytes() == b""


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_vllm_engine_without_vllm_names_the_install_command(workdir, tiny_model, sample_data):
    result = run_cli(generate_args(tiny_model, sample_data, workdir / "p.jsonl", engine="vllm"), expect=1)
    assert "Error: --engine vllm needs vLLM" in result.output and "pip install 'prefgen[vllm]'" in result.output
    assert "Traceback" not in result.output


def test_the_engine_joins_the_fingerprint(workdir, tiny_model, sample_data, monkeypatch):
    out = workdir / "p.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=1))
    monkeypatch.setattr("prefgen.flow.start.check_engine", lambda cfg: None)  # as where vLLM is installed
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=1, engine="vllm"), expect=1)
    assert "other settings" in result.output and "engine (ledger: 'transformers', now: 'vllm')" in result.output
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=1, batch_invariant=True), expect=1)
    assert "--batch-invariant is a vLLM setting" in result.output


def test_missing_model_directory(workdir, sample_data):
    result = run_cli(generate_args(workdir / "no-model", sample_data, workdir / "p.jsonl"), expect=1)
    assert "Error: " in result.output and "no-model: no such model directory" in result.output
    assert not list(workdir.glob("p.jsonl*"))  # refused before anything is made


@pytest.mark.parametrize("output, message", [("missing/dir/p.jsonl", "does not exist"), (".", "is a directory")])
def test_unusable_output_path(workdir, tiny_model, sample_data, output, message):
    result = run_cli(generate_args(tiny_model, sample_data, workdir / output), expect=1)
    assert result.output.startswith("Error: --output") and message in result.output


def test_cli_in_a_subprocess_warns_on_cuda_and_prints_no_traceback_for_bad_input(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, sample_data, out, max_samples=1, device="cuda")
    done = subprocess.run([sys.executable, "-m", "prefgen", *args], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "CUDA is not available: running on CPU" in done.stderr
    assert len(read_jsonl(out)) == 2
    # prefgen's own warnings reach the terminal; the libraries' (deprecations, advice) do not
    others = [line for line in done.stderr.splitlines() if "Warning" in line and not line.startswith("Warning: ")]
    assert others == [], done.stderr
    bad = write_records(workdir / "bad.json", [{"instruction": "x", "output": None}])
    done = subprocess.run(
        [sys.executable, "-m", "prefgen", *generate_args(tiny_model, bad, workdir / "o.jsonl")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Error: " in done.stderr and "record 0: field 'output' is empty" in done.stderr


def test_ledger_status_counts(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    run_cli(
        generate_args(tiny_model, sample_data, out, num_rejects=3, max_samples=2, temperature=0, dedup_rejects=True)
    )
    result = run_cli(["ledger", "status", str(out) + ".ledger.sqlite"])
    assert "Units    6 / 6 done (100.0%), 0 to retry" in result.output
    assert "Status   duplicate 4, written 2" in result.output
