"""What is at the model and adapter paths is part of what a resumed run must match (issue 17)."""

import shutil
import sqlite3
import struct

import orjson
from conftest import generate_args, query, read_jsonl, run_cli

from prefgen.ledger.keys import GENERATION_IDENTITY as META_KEY
from prefgen.resume.identity import model_identity, safetensors_header


def make_adapter(model_path, directory, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(directory)


def identity_of(out):
    rows = query(str(out) + ".ledger.sqlite", f"select value from meta where key = '{META_KEY}'")
    return orjson.loads(rows[0]["value"])


def test_an_adapter_retrained_in_place_is_refused_by_name(workdir, tiny_model, sample_data):
    adapter, out = workdir / "adapter", workdir / "pairs.jsonl"
    make_adapter(tiny_model, adapter, seed=1)
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=2, adapter_path=adapter))
    assert identity_of(out)["adapter_id"] not in ("", "missing")
    before = out.read_bytes()
    make_adapter(tiny_model, adapter, seed=2)  # retrained: same path, new weights
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=4, adapter_path=adapter), expect=1)
    assert result.output.startswith("Error: ") and f"the adapter at {adapter} changed since this run started" in (
        result.output.replace("\n", " ")
    )
    assert "new --output" in result.output and out.read_bytes() == before


def test_a_changed_base_model_config_is_refused_by_name(workdir, tiny_model, sample_data):
    model, out = workdir / "model", workdir / "pairs.jsonl"
    shutil.copytree(tiny_model, model)
    run_cli(generate_args(model, sample_data, out, max_samples=2))
    run_cli(generate_args(model, sample_data, out, max_samples=3))  # unchanged: resumes
    config = orjson.loads((model / "config.json").read_bytes())
    config["rope_theta"] = config.get("rope_theta", 10000) * 2
    (model / "config.json").write_bytes(orjson.dumps(config))
    result = run_cli(generate_args(model, sample_data, out, max_samples=4), expect=1)
    assert f"the base model at {model} changed since this run started" in result.output.replace("\n", " ")
    assert len(read_jsonl(out)) == 6


def test_the_engine_version_and_noise_are_recorded_and_a_changed_version_is_refused(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=2))
    identity = identity_of(out)
    assert identity["engine_version"].startswith("transformers ") and identity["noise_version"]
    conn = sqlite3.connect(str(out) + ".ledger.sqlite")
    identity["engine_version"] = "transformers 0.0.1"
    conn.execute("update meta set value = ? where key = ?", [orjson.dumps(identity).decode(), META_KEY])
    conn.commit()
    conn.close()
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=3), expect=1)
    assert "transformers 0.0.1 -> transformers " in result.output


def test_a_ledger_without_identities_records_them_with_one_warning(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=2))
    conn = sqlite3.connect(str(out) + ".ledger.sqlite")
    conn.execute("delete from meta where key = ?", [META_KEY])
    conn.commit()
    conn.close()
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=3))
    assert result.output.count("made before model identities were recorded") == 1
    assert identity_of(out)["base_model_id"]
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=4))
    assert "made before model identities" not in result.output


def test_weights_are_identified_by_name_size_and_header_without_reading_them(tmp_path):
    header = orjson.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}})
    shard = tmp_path / "model-00001-of-00001.safetensors"
    shard.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    (tmp_path / "config.json").write_text("{}")
    assert safetensors_header(shard) == header
    first = model_identity(str(tmp_path))
    with shard.open("r+b") as handle:  # a tensor's bytes: not read, so not seen
        handle.seek(len(header) + 8)
        handle.write(b"\1")
    assert model_identity(str(tmp_path)) == first
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert model_identity(str(tmp_path)) != first
    assert model_identity("Qwen/Qwen3-8B") == "ref:Qwen/Qwen3-8B"


def test_a_refusal_says_whether_the_generation_or_only_the_judging_changed(workdir, tiny_model, sample_data):
    out = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, out, max_samples=2))
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=2, seed=7), expect=1)
    assert "(they decide the generated text)" in result.output.replace("\n", " ")
    result = run_cli(generate_args(tiny_model, sample_data, out, max_samples=2, dedup_rejects="exact"), expect=1)
    assert "(judging only: same answers)" in result.output.replace("\n", " ")
    assert f"--reuse-answers {out}.ledger.sqlite" in result.output.replace("\n", "")
