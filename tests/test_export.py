"""Exports that LLaMA-Factory and TRL load."""

import orjson
import pytest
from conftest import generate_args, read_jsonl, run_cli


@pytest.fixture
def pairs(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=3, system="Answer with SQL only."))
    return out


def test_llamafactory_export_and_dataset_info(workdir, pairs):
    result = run_cli(["export", str(pairs), "--format", "llamafactory", "--to", str(workdir / "lf")])
    assert "Wrote 6 pairs" in result.output and "Skipped" not in result.output
    rows = read_jsonl(workdir / "lf" / "pairs.jsonl")
    source = read_jsonl(pairs)
    assert rows == [
        {
            "instruction": p["instruction"],
            "input": "",
            "chosen": p["chosen"],
            "rejected": p["rejected"],
            "system": "Answer with SQL only.",
        }
        for p in source
    ]
    info = orjson.loads((workdir / "lf" / "dataset_info.json").read_bytes())
    assert info == {
        "pairs": {
            "file_name": "pairs.jsonl",
            "ranking": True,
            "columns": {
                "prompt": "instruction",
                "query": "input",
                "chosen": "chosen",
                "rejected": "rejected",
                "system": "system",
            },
        }
    }


def test_rows_llamafactory_would_drop_are_skipped_and_counted(workdir):
    bad = workdir / "old.jsonl"
    lines = [
        {"instruction": "q1", "input": "", "chosen": "SELECT 1", "rejected": "SELECT 2"},
        {"instruction": "q2", "input": "", "chosen": "SELECT 1", "rejected": None},
        {"instruction": "q3", "input": "", "chosen": "SELECT 1", "rejected": 5},
        {"instruction": "q4", "chosen": ["SELECT 1"], "rejected": "SELECT 2"},
        {"input": "", "chosen": "SELECT 1", "rejected": "SELECT 2"},
        {"instruction": "q6", "chosen": "SELECT 1", "rejected": "  "},
        [1, 2],
    ]
    bad.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    (workdir / "lf").mkdir()
    (workdir / "lf" / "dataset_info.json").write_text('{"other": {"file_name": "x.json"}}')
    result = run_cli(["export", str(bad), "--format", "llamafactory", "--to", str(workdir / "lf")])
    assert "Wrote 1 pairs" in result.output
    for message in (
        "Skipped 1 rows: rejected is missing",
        "Skipped 1 rows: rejected is not a string",
        "Skipped 1 rows: chosen is not a string",
        "Skipped 1 rows: instruction is missing",
        "Skipped 1 rows: rejected is empty",
        "Skipped 1 rows: not a JSON object",
    ):
        assert message in result.output
    rows = read_jsonl(workdir / "lf" / "old.jsonl")
    assert rows == [{"instruction": "q1", "input": "", "chosen": "SELECT 1", "rejected": "SELECT 2"}]
    info = orjson.loads((workdir / "lf" / "dataset_info.json").read_bytes())
    assert set(info) == {"other", "old"}  # other datasets' entries are kept


def test_sharegpt_export(workdir, pairs):
    run_cli(["export", str(pairs), "--format", "sharegpt", "--to", str(workdir / "sg"), "--name", "spider_dpo"])
    rows = read_jsonl(workdir / "sg" / "spider_dpo.jsonl")
    first = read_jsonl(pairs)[0]
    assert rows[0] == {
        "conversations": [{"from": "human", "value": first["instruction"]}],
        "chosen": {"from": "gpt", "value": first["chosen"]},
        "rejected": {"from": "gpt", "value": first["rejected"]},
        "system": "Answer with SQL only.",
    }
    info = orjson.loads((workdir / "sg" / "dataset_info.json").read_bytes())
    assert info["spider_dpo"] == {
        "file_name": "spider_dpo.jsonl",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"},
    }


@pytest.mark.slow
def test_trl_export_loads_with_trl_and_trains_one_dpo_step(workdir, pairs, tiny_model):
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    from prefgen.flow.prompts import PromptBuilder
    from prefgen.flow.records import iter_records

    run_cli(["export", str(pairs), "--format", "trl", "--to", str(workdir / "trl")])
    dataset = datasets.load_dataset("json", data_files=str(workdir / "trl" / "pairs.jsonl"), split="train")
    assert len(dataset) == 6 and is_conversational(dataset[0])
    # the prompt TRL renders is exactly the prompt prefgen generated from (system included)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    records = {r.index: r for r in iter_records(workdir / "data.json", limit=3)}
    builder = PromptBuilder(tokenizer, system="Answer with SQL only.")
    for row, pair in zip(dataset, read_jsonl(pairs), strict=True):
        assert maybe_apply_chat_template(row, tokenizer)["prompt"] == builder(records[pair["sample_index"]])
    config = trl.DPOConfig(
        output_dir=str(workdir / "dpo"),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to=[],
        max_length=4096,
        use_cpu=True,
        save_strategy="no",
    )
    trainer = trl.DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0


def test_export_of_a_missing_file_is_an_error(workdir):
    result = run_cli(["export", str(workdir / "nope.jsonl"), "--format", "trl", "--to", str(workdir / "x")], expect=1)
    assert result.output.startswith("Error: ") and "nope.jsonl: cannot read" in result.output
