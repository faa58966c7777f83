"""The engine boundary (prefgen.engines.base.Engine): both engines and the tests' scripted
stand-in implement it, and what they load through transformers lives in engines/loading.py."""

import ast
import inspect
from types import SimpleNamespace

import pytest
from conftest import RECORDS, ROOT, SAMPLE, generate_args, query, read_jsonl, run_cli, scripted_engine, write_records

from prefgen.config import GenerateConfig
from prefgen.engines.base import Engine

PROTOCOL_METHODS = ("prompt_length", "find_batch_size", "start", "answers", "close")


def tiny_config(model, **overrides) -> GenerateConfig:
    options = dict(base_model=str(model), sft_data=str(SAMPLE), output="unused.jsonl", max_new_tokens=8, device="cpu")
    return GenerateConfig.from_flags(**{**options, **overrides})


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.fixture(scope="module")
def hf_engine(tiny_model):
    from prefgen.engines import load_engine

    engine = load_engine(tiny_config(tiny_model))
    yield engine
    engine.close()


@pytest.fixture
def vllm_engine(tiny_model):
    """A VLLMEngine around a stand-in for vLLM's LLMEngine (the class needs no vLLM to exist;
    its driver thread waits for batches and stops on close)."""
    from prefgen.engines.loading import load_tokenizer
    from prefgen.engines.vllm import VLLMEngine

    config = SimpleNamespace(
        model_config=SimpleNamespace(max_model_len=8192),
        scheduler_config=SimpleNamespace(max_num_seqs=16, max_num_batched_tokens=8192),
    )
    llm = SimpleNamespace(vllm_config=config, engine_core=SimpleNamespace())
    engine = VLLMEngine(llm, None, load_tokenizer(str(tiny_model)), [0], tiny_config(tiny_model), "cpu")
    yield engine
    engine.close()


def test_both_engines_and_the_scripted_one_implement_the_protocol(hf_engine, vllm_engine):
    from prefgen.engines.transformers import HFEngine
    from prefgen.engines.vllm import VLLMEngine

    scripted = scripted_engine(lambda sample, attempt: "SELECT 1")
    for engine in (hf_engine, vllm_engine, scripted):
        assert isinstance(engine, Engine), type(engine).__name__
        assert isinstance(engine.device, str) and isinstance(engine.adapter_merged, bool)
        assert isinstance(engine.overlap_default, bool)
    # and by signature: the run loop calls them with the protocol's arguments
    for cls in (HFEngine, VLLMEngine, type(scripted)):
        for name in PROTOCOL_METHODS:
            assert parameters(getattr(cls, name)) == parameters(getattr(Engine, name)), f"{cls.__name__}.{name}"
    assert not isinstance(object(), Engine)


def test_the_scripted_engine_answers_through_the_shared_batch_class():
    engine = scripted_engine(lambda sample, attempt: f"SELECT {sample + attempt}")
    unit = SimpleNamespace(sample_index=3, reject_index=1)
    answers, backoffs = engine.answers([unit], engine.start([unit]))
    assert [a.text for a in answers] == ["SELECT 4"] and backoffs == []
    assert engine.find_batch_size(100) == 1  # `auto` without a memory to measure: one row fits


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_the_engines_share_loading_not_each_other():
    engines = ROOT / "prefgen" / "engines"
    vllm, transformers = imported_modules(engines / "vllm.py"), imported_modules(engines / "transformers.py")
    assert not any(name.startswith("prefgen.engines.transformers") for name in vllm)
    assert not any(name.startswith("prefgen.engines.vllm") for name in transformers)
    assert "prefgen.engines.loading" in vllm and "prefgen.engines.loading" in transformers


# A record whose prompt is ~9,100 tokens for the tiny model (19 tokens a sentence), past its
# 8,192 positions, between records that fit.


@pytest.fixture
def computed(monkeypatch) -> dict[str, list[int]]:
    """The lengths the transformers engine computes on: prompts generated from, and the rows
    `--batch-size auto` probes memory with."""
    from prefgen.engines.transformers import HFEngine

    lengths: dict[str, list[int]] = {"prompts": [], "probes": []}
    generate_tokens, probe = HFEngine.generate_tokens, HFEngine._probe

    def recording_generate(self, units, rows):
        lengths["prompts"].extend(len(row) for row in rows)
        return generate_tokens(self, units, rows)

    def recording_probe(self, rows, length):
        lengths["probes"].append(length)
        return probe(self, rows, length)

    monkeypatch.setattr(HFEngine, "generate_tokens", recording_generate)
    monkeypatch.setattr(HFEngine, "_probe", recording_probe)
    return lengths


def assert_too_long_costs_its_units_only(out, sample: int, context: int, args) -> None:
    ledger = str(out) + ".ledger.sqlite"
    units = query(ledger, "select sample_index, status, detail, prompt_tokens, raw_answer from units")
    assert len(units) == 2 * len(RECORDS)
    refused = [u for u in units if u["sample_index"] == sample]
    assert [u["status"] for u in refused] == ["too_long", "too_long"]
    assert all(u["prompt_tokens"] >= context for u in refused)
    assert f"the prompt's {refused[0]['prompt_tokens']} tokens do not fit the engine's context" in refused[0]["detail"]
    others = [u for u in units if u["sample_index"] != sample]
    assert all(u["status"] != "too_long" and u["raw_answer"] is not None for u in others)
    assert len(read_jsonl(out)) == sum(u["status"] == "written" for u in units)
    failures = run_cli(["ledger", "failures", ledger]).output
    assert "too_long" in failures and "samples: 1" in failures
    assert "Nothing to do" in run_cli(args).output  # not retried


def test_a_prompt_past_the_models_positions_is_too_long_and_never_computed(tiny_model, workdir, computed):
    data = write_records(workdir / "data.json", RECORDS)
    out = workdir / "pairs.jsonl"
    args = generate_args(tiny_model, data, out, max_samples=0, batch_size=4)
    run_cli(args)  # exits 0
    assert_too_long_costs_its_units_only(out, 1, 8192, args)
    prompts = query(str(out) + ".ledger.sqlite", "select prompt_tokens from units where status = 'too_long'")
    assert all(8192 <= p["prompt_tokens"] < 10_000 for p in prompts)  # ~9k: only just too long
    assert computed["prompts"] and max(computed["prompts"]) < 8192  # the model never saw it


def test_max_model_len_bounds_the_transformers_engine_too(tiny_model, workdir, computed):
    """--max-model-len below the model's positions, with --batch-size auto (its probe sized for
    the prompts that fit) and a token bound (the long unit is a batch of its own)."""
    records = [{**r, "instruction": r["instruction"][:400]} for r in RECORDS]  # ~100 tokens: over 64
    data = write_records(workdir / "data.json", records)
    out = workdir / "pairs.jsonl"
    flags = dict(max_samples=0, batch_size="auto", max_model_len=64, max_batch_tokens=256)
    args = generate_args(tiny_model, data, out, **flags)
    run_cli(args)
    assert_too_long_costs_its_units_only(out, 1, 64, args)
    assert computed["prompts"] and max(computed["prompts"]) < 64
    fitting = query(str(out) + ".ledger.sqlite", "select max(prompt_tokens) as n from units where status != 'too_long'")
    assert set(computed["probes"]) == {fitting[0]["n"] + 8}  # sized for the longest prompt that fits


def test_new_tokens_stop_where_the_context_is_full(tiny_model):
    """As vLLM does: a prompt that fits leaves room for its new tokens up to the context."""
    from prefgen.engines import load_engine
    from prefgen.flow.plan import plan_units
    from prefgen.flow.records import iter_records

    units = list(plan_units(iter_records(SAMPLE, limit=1), num_rejects=2, seed=5))
    free = load_engine(tiny_config(tiny_model, max_new_tokens=12, temperature=1.0))
    length = free.prompt_length(units[0])
    bounded = load_engine(tiny_config(tiny_model, max_new_tokens=12, temperature=1.0, max_model_len=length + 3))
    new_tokens = {}
    for engine, most in ((free, 12), (bounded, 3)):
        answers, _ = engine.answers(units, engine.start(units))
        assert all(not a.too_long for a in answers)
        new_tokens[most] = [a.new_tokens for a in answers]
    assert max(new_tokens[12]) > 3  # unbounded, they write more: the bound stopped them
    assert new_tokens[3] == [min(n, 3) for n in new_tokens[12]]
