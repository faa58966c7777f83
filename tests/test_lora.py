"""`--lora` for the vLLM engine, in the parts that need no vLLM: which mode where, the rank vLLM
is given, and a merge that says, and checks, the disk it needs before it starts (the engine
runs with each mode in test_vllm.py)."""

import json
import shutil
from collections import namedtuple

import pytest

from prefgen.config import GenerateConfig
from prefgen.engines import vllm_lora
from prefgen.errors import ConfigError, ModelError
from prefgen.resume.fingerprint import fingerprint_of

Usage = namedtuple("Usage", "total used free")


def config(adapter, lora="auto", **flags):
    settings = dict(base_model="m", sft_data="d", output="o", engine="vllm", lora=lora)
    return GenerateConfig.from_flags(adapter_path=str(adapter), **settings, **flags)


@pytest.fixture
def adapter(tmp_path):
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": 12, "rank_pattern": {"q_proj": 24}}))
    return path


def test_auto_is_native_on_a_gpu_that_serves_the_models_lora_and_merge_elsewhere(adapter):
    assert vllm_lora.choose_lora(config(adapter), "cuda", supported=True) == "native"
    assert vllm_lora.choose_lora(config(adapter), "cuda", supported=False) == "merge"
    assert vllm_lora.choose_lora(config(adapter), "cpu", supported=True) == "merge"
    assert vllm_lora.choose_lora(config(adapter, "native"), "cpu") == "native"  # asked for: tried, vLLM says no
    assert vllm_lora.choose_lora(config(adapter, "merge"), "cuda", supported=True) == "merge"
    assert vllm_lora.choose_lora(config(""), "cuda", supported=True) == ""


def test_the_rank_is_the_adapters_largest_rounded_up_to_one_vllm_serves(adapter):
    assert vllm_lora.lora_rank(str(adapter), ranks=(1, 8, 16, 32, 64)) == 32
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 128}))
    with pytest.raises(ModelError, match="rank 128 is above the largest vLLM serves natively") as caught:
        vllm_lora.lora_rank(str(adapter), ranks=(8, 16, 32, 64))
    assert "--lora merge" in caught.value.hint


def test_lora_is_a_vllm_setting_and_in_the_fingerprint_only_when_chosen(adapter):
    with pytest.raises(ConfigError, match="--lora is a vLLM setting"):
        GenerateConfig.from_flags(base_model="m", sft_data="d", output="o", lora="native")
    assert "lora" not in fingerprint_of(config(adapter))
    assert fingerprint_of(config(adapter, "merge"))["lora"] == "merge"


def test_a_merge_the_disk_has_no_room_for_is_refused_before_it_starts(tiny_model, adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFGEN_MERGED_CACHE", str(tmp_path / "merged"))
    needed = vllm_lora.weights_size(str(tiny_model))
    assert needed > 0
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12, needed // 2))
    merged = []
    monkeypatch.setattr(vllm_lora, "merged_model", lambda *a: merged.append(a) or ("merged", True))
    with pytest.raises(ModelError, match=r"the adapter needs .* GB in .*merged, which has .* GB free") as caught:
        vllm_lora.merge_with_room(str(tiny_model), str(adapter))
    assert "PREFGEN_MERGED_CACHE" in caught.value.hint and "--lora native" in caught.value.hint
    assert merged == []  # nothing was started
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 0, 10**12))
    assert vllm_lora.merge_with_room(str(tiny_model), str(adapter)) == ("merged", True)
    assert merged == [(str(tiny_model), str(adapter))]
