"""The engine boundary (prefgen.engines.base.Engine): both engines and the tests' scripted
stand-in implement it, and what they load through transformers lives in engines/loading.py."""

import ast
import inspect
from types import SimpleNamespace

import pytest
from conftest import ROOT, SAMPLE, scripted_engine

from prefgen.config import GenerateConfig
from prefgen.engines.base import Engine

PROTOCOL_METHODS = ("prompt_length", "find_batch_size", "start", "answers", "close")


def tiny_config(model, **overrides) -> GenerateConfig:
    options = dict(base_model=str(model), sft_data=str(SAMPLE), output="unused.jsonl", max_new_tokens=8, device="cpu")
    return GenerateConfig(**{**options, **overrides})


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
        model_config=SimpleNamespace(max_model_len=8192), scheduler_config=SimpleNamespace(max_num_seqs=16)
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
