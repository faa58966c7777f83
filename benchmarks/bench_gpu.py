"""`make bench-gpu`: prefgen's engines on a GPU, on a model with Qwen3-Coder-30B-A3B's widths.

For a machine with torch, transformers and a GPU but no package registry and no model download:
a bf16 Qwen3-MoE is built from a config with the real model's widths (hidden 2048, 128 experts of
intermediate 768, 8 active, 32 query / 4 KV heads of 128, vocabulary 151936) and fewer layers
(`--layers`, default 4), with random weights, saved with prefgen's tiny tokenizer, and the
transformers engine generates `--units` units of the shipped Spider prompts (examples/spider_en).
Where vLLM imports, the same units go through `--engine vllm` and through bare `LLM.generate`.

Printed per way: units/s, output tokens/s, and the share of the memory-bandwidth bound:

    bytes per decode step = dense weights x 2 B (attention, router, lm_head; embedding rows are few)
                          + experts touched (layers x E x (1 - (1 - k/E)^B) x 3 x hidden x moe_inter x 2 B)
                          + KV read (B x context x layers x 2 x kv_heads x head_dim x 2 B)
    bound tokens/s        = B x bandwidth / bytes per step

with B the batch's sequences, context the mean prompt plus half the new tokens, E experts, k
active. The GPU's bandwidth comes from a table by name or `--bandwidth` (TB/s). `--smoke` uses
tiny widths on the CPU so CI proves the script runs (its figures mean nothing).
Needs no package beyond torch and transformers (no click, no ledger): it drives the engines
directly, as the run loop does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prefgen.config import GenerateConfig  # noqa: E402
from prefgen.flow.plan import plan_units  # noqa: E402
from prefgen.units import Record  # noqa: E402

REAL = dict(hidden=2048, moe_intermediate=768, experts=128, active=8, heads=32, kv_heads=4, head_dim=128, vocab=151936)
SMOKE = dict(hidden=64, moe_intermediate=32, experts=4, active=2, heads=4, kv_heads=2, head_dim=32, vocab=0)
BANDWIDTH_TBS = {"h200": 4.8, "h100": 3.35, "a100": 2.0, "l40s": 0.864, "b200": 8.0}  # vendor data sheets


def build_model(directory: Path, widths: dict, layers: int, dtype: str) -> Path:
    """A random Qwen3-MoE with these widths and prefgen's tiny tokenizer (engines/tiny.py)."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from prefgen.engines.loading import quiet_transformers
    from prefgen.engines.tiny import build_tokenizer

    quiet_transformers()
    tokenizer = build_tokenizer()
    config = Qwen3MoeConfig(
        vocab_size=widths["vocab"] or len(tokenizer),
        hidden_size=widths["hidden"],
        intermediate_size=widths["moe_intermediate"] * 8,
        moe_intermediate_size=widths["moe_intermediate"],
        num_hidden_layers=layers,
        num_attention_heads=widths["heads"],
        num_key_value_heads=widths["kv_heads"],
        head_dim=widths["head_dim"],
        num_experts=widths["experts"],
        num_experts_per_tok=widths["active"],
        max_position_embeddings=8192,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def spider_units(count: int, rejects: int, seed: int) -> list:
    """`count` units: the shipped Spider records' prompts, `rejects` units each."""
    records = json.loads((ROOT / "examples" / "spider_en" / "department_store_alpaca.json").read_text())
    needed = -(-count // rejects)
    chosen = [
        Record(i, fields, hashlib.sha256(json.dumps(fields).encode()).hexdigest())
        for i, fields in enumerate((records * (needed // len(records) + 1))[:needed])
    ]
    return list(plan_units(chosen, rejects, seed))[:count]


def step_bytes(widths: dict, layers: int, batch: int, context: float, dense_params: float) -> float:
    """Bytes one decode step reads (the formula in the module's docstring)."""
    experts, active = widths["experts"], widths["active"]
    touched = experts * (1 - (1 - active / experts) ** batch)
    expert_bytes = layers * touched * 3 * widths["hidden"] * widths["moe_intermediate"] * 2
    kv_bytes = batch * context * layers * 2 * widths["kv_heads"] * widths["head_dim"] * 2
    return dense_params * 2 + expert_bytes + kv_bytes


def run_engine(cfg: GenerateConfig, units: list) -> dict:
    """Generate the units through prefgen's engine boundary in batches of --batch-size."""
    from prefgen.engines import load_engine

    engine = load_engine(cfg)
    try:
        prompt = sum(engine.prompt_length(u) for u in units) / len(units)
        started, tokens = time.perf_counter(), 0
        for i in range(0, len(units), cfg.batch_size):
            batch = units[i : i + cfg.batch_size]
            answers, _ = engine.answers(batch, engine.start(batch))
            tokens += sum(a.new_tokens for a in answers)
        return {"seconds": time.perf_counter() - started, "tokens": tokens, "prompt": prompt}
    finally:
        engine.close()


def bare_vllm(cfg: GenerateConfig, units: list) -> dict:
    """vLLM's own `LLM.generate` on the same prompts and seeds."""
    from vllm import LLM, SamplingParams

    from prefgen.engines.loading import load_tokenizer
    from prefgen.engines.vllm import engine_args, prepare_environment
    from prefgen.flow.prompts import PromptBuilder

    prepare_environment(cfg)
    build = PromptBuilder(load_tokenizer(cfg.base_model), cfg.system)
    tokenizer = load_tokenizer(cfg.base_model)
    prompts = [tokenizer(build(u.record), add_special_tokens=False)["input_ids"] for u in units]
    options = engine_args(dict, cfg, cfg.base_model, "cuda" if cfg.device.startswith("cuda") else "cpu")
    options.pop("distributed_executor_backend")
    llm = LLM(**options)
    params = [
        SamplingParams(seed=u.seed, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens)
        for u in units
    ]
    started = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "prompt": sum(map(len, prompts)) / len(prompts),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--rejects", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--bandwidth", type=float, default=0.0, help="TB/s [default: from the GPU's name]")
    parser.add_argument("--smoke", action="store_true", help="tiny widths on the CPU: proves the script runs")
    parser.add_argument("--no-vllm", action="store_true")
    args = parser.parse_args(argv)
    widths = SMOKE if args.smoke else REAL
    if args.smoke:
        args.layers, args.units, args.batch_size, args.max_new_tokens, args.device = 1, 4, 4, 4, "cpu"
        args.no_vllm = True
    bandwidth = args.bandwidth or gpu_bandwidth(args.device)
    with tempfile.TemporaryDirectory(prefix="prefgen-bench-gpu-") as tmp:
        dtype = "float32" if args.device == "cpu" else "bfloat16"
        model = build_model(Path(tmp) / "model", widths, args.layers, dtype)
        dense = dense_parameters(model, widths)
        units = spider_units(args.units, args.rejects, 1234)
        cfg = GenerateConfig.from_flags(
            base_model=str(model),
            sft_data="-",
            output="-",
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
            seed=1234,
        )
        ways = {"transformers engine": lambda: run_engine(cfg, units)}
        if not args.no_vllm and vllm_importable():
            vcfg = GenerateConfig.from_flags(**{**cfg.settings(), "engine": "vllm"})
            ways["--engine vllm"] = lambda: run_engine(vcfg, units)
            ways["bare vLLM LLM.generate"] = lambda: bare_vllm(vcfg, units)
        print(
            f"Model: Qwen3-MoE {'smoke' if args.smoke else 'real'} widths, {args.layers} layers, {dtype}; "
            f"{len(units)} units, batch {args.batch_size}, {args.max_new_tokens} new tokens; "
            f"bandwidth {bandwidth or 'unknown'} TB/s"
        )
        print(f"  {'way':<26}{'units/s':>10}{'tok/s':>10}{'prompt':>9}{'bound tok/s':>13}{'share':>8}")
        for name, way in ways.items():
            r = way()
            context = r["prompt"] + r["tokens"] / len(units) / 2
            step = step_bytes(widths, args.layers, args.batch_size, context, dense)
            bound = args.batch_size * bandwidth * 1e12 / step
            rate = r["tokens"] / r["seconds"]
            share = f"{rate / bound:.0%}" if bandwidth else "-"
            print(
                f"  {name:<26}{len(units) / r['seconds']:>10.2f}{rate:>10.1f}{r['prompt']:>9.0f}"
                f"{bound if bandwidth else 0:>13.0f}{share:>8}"
            )


def dense_parameters(model: Path, widths: dict) -> float:
    """Parameters read once per step whatever the batch: attention, router and lm_head."""
    config = json.loads((model / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    attention = hidden * widths["head_dim"] * (2 * widths["heads"] + 2 * widths["kv_heads"])
    return layers * (attention + hidden * widths["experts"]) + config["vocab_size"] * hidden


def gpu_bandwidth(device: str) -> float:
    """The GPU's memory bandwidth in TB/s, from its name (0: unknown, or the CPU)."""
    if not device.startswith("cuda"):
        return 0.0
    import torch

    name = torch.cuda.get_device_name(0).lower()
    return next((tbs for key, tbs in BANDWIDTH_TBS.items() if key in name), 0.0)


def vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


if __name__ == "__main__":
    main()
