"""`--engine vllm`, through the real CLI with vLLM's CPU build (`make check-vllm`, which
builds `.venv-vllm`). vLLM's engine takes 40-60 s to start here, so the runs are few and each
checks several things."""

import importlib.util
import os
import random
import shutil
import signal
import time

import orjson
import pytest
from conftest import (
    RECORDS,
    ROOT,
    assert_ledger_agrees_with_file,
    committed,
    generate_args,
    query,
    read_jsonl,
    run,
    run_cli,
    start,
    write_records,
)

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (`make check-vllm`)"),
]

DB_ROOT = ROOT / "examples" / "spider_en" / "db"
FLAGS = dict(engine="vllm", num_rejects=3, max_samples=12, batch_size=8, max_new_tokens=24, seed=7)


def vllm_args(model, data, out, **flags):
    return generate_args(model, data, out, **{**FLAGS, **flags})


@pytest.fixture(scope="module")
def vllm_reference(tiny_model, tmp_path_factory):
    """An uninterrupted vLLM run, in a directory of its own, shared by the module's tests."""
    work = tmp_path_factory.mktemp("reference")
    data = work / "data.json"
    data.write_bytes((ROOT / "examples" / "spider_en" / "department_store_alpaca.json").read_bytes())
    out = work / "reference.jsonl"
    code, output = run(vllm_args(tiny_model, data, out))
    assert code == 0, output
    return data, out


def token_carriers(pid: int) -> list[int]:
    """Processes started by run `pid` (they carry its token) that are still alive."""
    from prefgen.runtime.processes import TOKEN_VAR

    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
                state = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and any(item.startswith(f"{TOKEN_VAR}={pid}-".encode()) for item in environ):
                found.append(int(entry))
    return found


def file_size(path) -> int:
    return path.stat().st_size if path.exists() else 0


def assert_nothing_left(pid: int) -> None:
    deadline = time.time() + 15
    while time.time() < deadline and token_carriers(pid):
        time.sleep(0.2)
    assert not token_carriers(pid), "a process of the killed run is still alive"


def test_end_to_end_and_the_batch_does_not_change_any_unit(vllm_reference, tiny_model, workdir):
    data, reference = vllm_reference
    lines = read_jsonl(reference)
    assert lines and {line["seed"] for line in lines} <= {7 + s * 1000 + r for s in range(12) for r in range(3)}
    units = query(str(reference) + ".ledger.sqlite", "select * from units")
    assert len(units) == 36 and all(u["raw_answer"] is not None for u in units)
    events = query(str(reference) + ".ledger.sqlite", "select detail from events where kind = 'model_loaded'")
    detail = orjson.loads(events[0]["detail"])
    assert detail["engine"] == "vllm"
    # what vLLM used: --batch-size as max_num_seqs; batched tokens its offline default, raised
    # to the context on CPU, where prefgen turns chunked prefill off
    assert (detail["max_num_seqs"], detail["max_num_batched_tokens"], detail["max_model_len"]) == (8, 8192, 8192)
    one = workdir / "one.jsonl"
    code, output = run(vllm_args(tiny_model, data, one, batch_size=1))
    assert code == 0, output
    assert one.read_bytes() == reference.read_bytes()  # batch 1 and batch 8: the same file
    # another order and other neighbours: no grouping by length, odd batches
    shuffled = workdir / "shuffled.jsonl"
    code, output = run(vllm_args(tiny_model, data, shuffled, batch_size=5, lookahead=1))
    assert code == 0, output
    key = "sample_index, reject_index, seed, status, raw_answer"
    order = " order by sample_index, reject_index"
    assert query(str(shuffled) + ".ledger.sqlite", f"select {key} from units{order}") == query(
        str(reference) + ".ledger.sqlite", f"select {key} from units{order}"
    )


def test_kills_and_sigterm_then_resume_give_the_same_file_and_leave_no_process(vllm_reference, tiny_model, workdir):
    """SIGKILLs at engine start, mid-generation and between the JSONL write and the commit, a
    SIGTERM, then a clean finish: byte-identical to the uninterrupted run, and after each kill
    no process of the run is left."""
    data, reference = vllm_reference
    seed = int(os.environ.get("PREFGEN_CHAOS_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    out = workdir / "pairs.jsonl"
    args = vllm_args(tiny_model, data, out, batch_size=2)  # 18 batches: room for every kill
    kills = 0
    for fault in ("mid_model_load:kill", "after_jsonl_write:kill@2", None, "after_commit:kill@3", "generate:kill@4"):
        process = start(args, fault=fault)
        if fault is None:  # a kill at a random moment once lines are being written
            size = file_size(out)
            deadline = time.time() + 240
            while process.poll() is None and time.time() < deadline and file_size(out) == size:
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.5))
            process.kill()
        _, stderr = process.communicate(timeout=300)
        assert process.returncode in (0, -signal.SIGKILL), f"seed {seed}: {stderr}"
        kills += process.returncode == -signal.SIGKILL
        assert_nothing_left(process.pid)
    assert kills >= 5, f"seed {seed}: only {kills} kills landed"
    process = start(args)
    deadline = time.time() + 240
    size = out.stat().st_size
    while process.poll() is None and time.time() < deadline and out.stat().st_size == size:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode in (0, 143), stderr
    if process.returncode == 143:
        assert "Run the same command again to resume" in stderr
    assert_ledger_agrees_with_file(out)
    assert_nothing_left(process.pid)
    code, output = run(args)
    assert code == 0, f"seed {seed}: {output}"
    assert out.read_bytes() == reference.read_bytes(), f"seed {seed}"
    assert_ledger_agrees_with_file(out)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray in .venv-vllm")
def test_on_ray_a_worker_holds_the_vllm_engine_dies_with_the_driver_and_resumes(vllm_reference, tiny_model, workdir):
    """--executor ray --engine vllm on a Ray of the run's own: the engine worker loads prefgen's
    vLLM engine with its settings; kill -9 of the driver once a block is committed leaves no
    process (Ray's, the worker's, vLLM's engine core); the same command resumes to the
    reference run's units, in (sample, reject) order."""
    import tempfile

    data, reference = vllm_reference
    out = workdir / "ray.jsonl"
    args = vllm_args(tiny_model, data, out, executor="ray", workers="1", block_units=6)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths are length-limited
    try:
        ledger = str(out) + ".ledger.sqlite"
        process = start(args, env=env)
        deadline = time.time() + 240
        while process.poll() is None and time.time() < deadline:
            if committed(ledger):
                break
            time.sleep(0.2)
        process.kill()
        process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL
        assert_nothing_left(process.pid)
        done = query(ledger, "select count(*) as n from units")[0]["n"]  # committed (a line past them is cut)
        assert 0 < done < 36
        resumed = start(args, env=env)
        stdout, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, stderr
        assert f"Generated {36 - done} units; 36/36 done" in stdout + stderr
        assert sorted(out.read_bytes().splitlines()) == sorted(reference.read_bytes().splitlines())
        keys = [(line["sample_index"], line["reject_index"]) for line in read_jsonl(out)]
        assert keys == sorted(keys)
        assert_ledger_agrees_with_file(out)
        loaded = [
            orjson.loads(row["detail"])
            for row in query(ledger, "select detail from events where kind = 'model_loaded'")
        ]
        assert {(d["engine"], d["executor"], d["max_num_seqs"], d["max_model_len"]) for d in loaded} == {
            ("vllm", "ray", 8, 8192)
        }
        assert_nothing_left(resumed.pid)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def test_the_adapter_is_merged_once_and_applied(tiny_model, workdir, vllm_reference, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    data, reference = vllm_reference
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(workdir / "adapter")
    monkeypatch.setenv("PREFGEN_MERGED_CACHE", str(workdir / "merged"))
    out = workdir / "adapted.jsonl"
    code, output = run(vllm_args(tiny_model, data, out, adapter_path=workdir / "adapter"))
    assert code == 0, output
    assert [line["rejected"] for line in read_jsonl(out)] != [line["rejected"] for line in read_jsonl(reference)]
    events = query(str(out) + ".ledger.sqlite", "select detail from events where kind = 'model_loaded'")
    assert orjson.loads(events[0]["detail"])["adapter_merged"] is True
    (merged,) = [p for p in (workdir / "merged").iterdir() if p.is_dir()]
    assert (merged / "config.json").exists() and (merged / "tokenizer_config.json").exists()


def test_too_long_prompts_and_verdicts(tiny_model, workdir):
    records = [
        {"instruction": "How many products are there?", "output": "SELECT count(*) FROM products"},
        {"instruction": "Name them. " + "Please. " * 400, "output": "SELECT product_name FROM products"},
        {"instruction": "List the staff.", "output": "SELECT staff_name FROM staff"},
    ]
    data = write_records(workdir / "data.json", [{**r, "db_id": "department_store"} for r in records])
    out = workdir / "pairs.jsonl"
    args = vllm_args(tiny_model, data, out, num_rejects=2, max_samples=0, max_model_len=512, db_root=DB_ROOT)
    code, output = run(args)
    assert code == 0, output
    units = query(str(out) + ".ledger.sqlite", "select sample_index, status, verdict, detail from units")
    too_long = [u for u in units if u["sample_index"] == 1]
    assert [u["status"] for u in too_long] == ["too_long", "too_long"]
    assert "do not fit the engine's context" in too_long[0]["detail"]
    assert all(u["verdict"] for u in units if u["status"] == "written")
    failures = run_cli(["ledger", "failures", str(out) + ".ledger.sqlite"]).output
    assert "too_long" in failures and "samples: 1" in failures
    code, output = run(args)  # not retried: nothing to do
    assert code == 0 and "Nothing to do" in output


def test_a_prompt_past_the_models_positions_mid_file_is_too_long(tiny_model, workdir):
    """A ~9,100-token record between records that fit the tiny model's 8,192 positions (no
    --max-model-len): its units are too_long, the others generated, and the run exits 0."""
    data = write_records(workdir / "data.json", RECORDS)
    out = workdir / "pairs.jsonl"
    code, output = run(vllm_args(tiny_model, data, out, num_rejects=2, max_samples=0))
    assert code == 0, output
    ledger = str(out) + ".ledger.sqlite"
    units = query(ledger, "select sample_index, status, prompt_tokens, raw_answer from units")
    assert len(units) == 8
    refused = [u for u in units if u["sample_index"] == 1]
    assert [u["status"] for u in refused] == ["too_long", "too_long"]
    assert all(8192 <= u["prompt_tokens"] < 10_000 for u in refused)
    assert all(u["status"] != "too_long" and u["raw_answer"] is not None for u in units if u["sample_index"] != 1)
    failures = run_cli(["ledger", "failures", ledger]).output
    assert "too_long" in failures and "samples: 1" in failures


def test_torchrun_ranks_run_one_engine_each_and_merge(tiny_model, workdir, vllm_reference, monkeypatch):
    data, _ = vllm_reference
    out = workdir / "pairs.jsonl"
    for rank in (0, 1):  # as torchrun starts them: the rank in the environment
        for name, value in dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1").items():
            monkeypatch.setenv(name, str(value))
        monkeypatch.setenv("MASTER_PORT", "29517")
        code, output = run(vllm_args(tiny_model, data, out, max_samples=4))
        assert code == 0, output
    run_cli(["merge", "--output", str(out), "--world-size", "2"])
    lines = read_jsonl(out)
    assert sorted({line["sample_index"] for line in lines}) == [0, 1, 2, 3]


def test_not_enough_memory_for_the_kv_cache_is_an_error_naming_the_flags(tiny_model, workdir, monkeypatch):
    data = write_records(workdir / "data.json", [{"instruction": "q", "output": "SELECT 1"}])
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "0")  # then the memory share decides
    code, output = run(vllm_args(tiny_model, data, workdir / "p.jsonl", gpu_memory_utilization=0.001))
    assert code == 1 and "Traceback" not in output
    assert "Error: vLLM could not start" in output and "No available memory for the cache blocks" in output
    assert "--max-model-len" in output and "--gpu-memory-utilization" in output


def test_resuming_a_vllm_run_with_the_transformers_engine_is_refused(vllm_reference, tiny_model):
    data, reference = vllm_reference
    code, output = run(generate_args(tiny_model, data, reference, **{**FLAGS, "engine": "transformers"}))
    assert code == 1 and "engine (ledger: 'vllm', now: 'transformers')" in output


def test_the_engine_is_sized_as_vllms_llm_class_sizes_offline_work(tiny_model):
    """The engine config prefgen builds, without starting the engine: vLLM's offline defaults
    for this platform (EngineArgs.get_batch_defaults, LLM_CLASS), not the engine context's."""
    from dataclasses import replace

    from vllm import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    from prefgen.config import GenerateConfig
    from prefgen.engines.vllm import engine_args, offline_context

    cfg = GenerateConfig.from_flags(
        base_model=str(tiny_model), sft_data="d", output="o", engine="vllm", batch_size="auto"
    )
    tokens, seqs = EngineArgs.get_batch_defaults(1)
    assert offline_context() == UsageContext.LLM_CLASS

    def scheduler(cfg):
        config = engine_args(EngineArgs, cfg, str(tiny_model), "cpu").create_engine_config(offline_context())
        return config.scheduler_config, config.model_config.max_model_len

    chosen, context = scheduler(cfg)
    assert chosen.max_num_seqs == seqs[UsageContext.LLM_CLASS] > 128  # 128: the engine context's default
    # without chunked prefill (off on CPU) vLLM raises the batched tokens to the context
    assert chosen.max_num_batched_tokens == max(tokens[UsageContext.LLM_CLASS], context)
    chosen, _ = scheduler(replace(cfg, batch_size=8, max_batch_tokens=9000))
    assert (chosen.max_num_seqs, chosen.max_num_batched_tokens) == (8, 9000)


def test_native_lora_asks_vllm_for_the_adapters_rank_and_sends_it_with_each_request(tiny_model, workdir):
    from vllm import EngineArgs

    from prefgen.config import GenerateConfig
    from prefgen.engines.vllm import engine_args
    from prefgen.engines.vllm_lora import allowed_ranks, lora_rank, lora_request

    adapter = workdir / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 12}')
    assert lora_rank(str(adapter)) == 16 and 16 in allowed_ranks()
    request = lora_request(str(adapter))
    assert (request.lora_name, request.lora_int_id, request.lora_path) == ("adapter", 1, str(adapter.resolve()))
    cfg = GenerateConfig.from_flags(base_model=str(tiny_model), sft_data="d", output="o", engine="vllm", lora="native")
    args = engine_args(EngineArgs, cfg, str(tiny_model), "cpu", lora_rank=16)
    assert (args.enable_lora, args.max_lora_rank, args.max_loras) == (True, 16, 1)


def test_check_invariance_runs_both_modes_and_finds_every_text_identical_on_cpu(tiny_model, workdir):
    """Off and on in processes of their own; vLLM's CPU build may lack the invariant mode's
    kernels for this MoE model, which is then reported, not fatal (off is the mode judged)."""
    data = workdir / "data.json"
    data.write_bytes((ROOT / "examples" / "spider_en" / "department_store_alpaca.json").read_bytes())
    args = ["check-invariance", "--engine", "vllm", "--base-model", str(tiny_model), "--sft-data", str(data)]
    args += ["--device", "cpu", "--samples", "1", "--num-rejects", "2", "--batch-size", "4", "--max-new-tokens", "6"]
    code, output = run(args)
    assert code == 0, output
    assert "Engine vllm on cpu; full batch: 4 rows" in output
    assert "invariant off  sample/reject  alone, cached  batch          batch, cached" in output
    assert "0/0            same           same           same" in output
    assert "invariant on" in output and "DIFFERS" not in output
    assert "All 2 units identical under every condition: here, a resumed run writes the same bytes" in output


def test_prefix_property_and_a_cap_raised_in_place(vllm_reference, tiny_model, workdir):
    """vLLM's per-request seeded sampling: a unit's first 12 tokens are the same at cap 24, so a
    run at cap 12 raised in place to 24 regenerates only its cut units and ends as the reference."""
    data, reference = vllm_reference
    out = workdir / "raised.jsonl"
    code, output = run(vllm_args(tiny_model, data, out, max_new_tokens=12))
    assert code == 0, output
    columns = "sample_index, reject_index, raw_answer, new_tokens, truncated"
    sql = f"select {columns} from units order by sample_index, reject_index"
    short, full = query(str(out) + ".ledger.sqlite", sql), query(str(reference) + ".ledger.sqlite", sql)
    assert all(row["truncated"] == (row["new_tokens"] == 24) for row in full)
    for unit, longer in zip(short, full, strict=True):
        assert unit["truncated"] == (unit["new_tokens"] == 12)
        assert longer["raw_answer"].startswith(unit["raw_answer"])
        if not unit["truncated"]:
            assert longer == unit
    code, output = run(vllm_args(tiny_model, data, out))
    assert code == 0, output
    assert out.read_bytes() == reference.read_bytes()
    cut = sum(unit["truncated"] for unit in short)
    assert f"{len(short) - cut} reused from an earlier run, {cut} regenerated at a larger cap" in output
