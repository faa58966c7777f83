"""`make bench-engines`: the vLLM engine against bare vLLM and the transformers engine.

The same units (Spider prompts of the shipped sample x rejects, one seed each) are generated,
in one process, one way after the other: (a) first (vLLM's CPU backend binds the process's
threads once it starts), then (d) `prefgen generate --engine vllm` end to end
(ledger, JSONL, judging; the engine already started), (e) bare vLLM: `LLM.generate` on the same
prompt token ids with the same per-request seeds, nothing written, and (a) `prefgen generate`
with the transformers engine (model already loaded). Each on the default tiny model and on a
bigger one (hidden 256, 8 layers), where the model rather than Python dominates.
Runs in .venv-vllm (vLLM's CPU build here). A measurement script, not a test.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click
from bench import bench_config, print_table, row, sample_records, timed_prefgen, write_json

from prefgen.config import GenerateConfig
from prefgen.flow.plan import plan_units
from prefgen.flow.records import iter_records


def bare_vllm(cfg: GenerateConfig, prompts: list[list[int]], seeds: list[int]) -> tuple[float, int, int]:
    """(seconds, units, new tokens) of vLLM's own `LLM.generate`, its engine already started."""
    from vllm import LLM, SamplingParams

    from prefgen.engines.vllm import engine_args, prepare_environment

    prepare_environment(cfg)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # vLLM's default: its engine core in a process of its own
    options = engine_args(dict, cfg, cfg.base_model, "cuda" if cfg.device.startswith("cuda") else "cpu")
    options.pop("distributed_executor_backend")
    llm = LLM(**options)
    params = [
        SamplingParams(seed=seed, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens)
        for seed in seeds
    ]
    started = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return seconds, len(outputs), tokens


def compare(cfg: GenerateConfig, work: Path, label: str) -> dict:
    from prefgen.engines import load_engine

    units = list(plan_units(iter_records(cfg.sft_data, cfg.max_samples), cfg.num_rejects, cfg.seed))
    # the transformers engine first: vLLM's CPU backend binds this process's threads and memory
    hf_cfg = replace(cfg, output=str(work / f"a-{label}.jsonl"))
    hf = load_engine(hf_cfg)
    a = row("(a) prefgen, transformers engine", *timed_prefgen(hf_cfg, hf))
    del hf
    gc.collect()
    vllm_cfg = replace(cfg, engine="vllm", output=str(work / f"d-{label}.jsonl"))
    engine = load_engine(vllm_cfg)
    prompts = [engine.prompt_ids(u) for u in units]
    d = row("(d) prefgen --engine vllm, end to end", *timed_prefgen(vllm_cfg, engine))
    engine.close()
    del engine
    gc.collect()
    e = row("(e) bare vLLM LLM.generate", *bare_vllm(cfg, prompts, [u.seed for u in units]))
    ratios = [
        ("(d)/(e) units/s", d["units_per_s"] / e["units_per_s"], "target >= 0.9"),
        ("(d)/(a) units/s", d["units_per_s"] / a["units_per_s"], "report"),
    ]
    print_table(f"Engines, {label}", [d, e, a], ratios)
    return {"rows": [d, e, a], "ratios": {n: v for n, v, _ in ratios}}


@click.command()
@click.option("--samples", type=int, default=48, show_default=True)
@click.option("--rejects", type=int, default=4, show_default=True)
@click.option("--max-new-tokens", type=int, default=48, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda where vLLM is built for it.")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the figures as JSON.")
def main(samples, rejects, max_new_tokens, batch_size, device, json_out):
    """Benchmark the vLLM engine (d) against bare vLLM (e) and the transformers engine (a)."""
    from prefgen.engines.tiny import build_tiny_model

    results = {}
    with tempfile.TemporaryDirectory(prefix="prefgen-bench-engines-") as tmp:
        work = Path(tmp)
        data = write_json(work / "data.json", sample_records(samples))
        click.echo(
            f"Work: {samples} Spider prompts x {rejects} rejects, {max_new_tokens} new tokens, batch {batch_size}"
        )
        for label, size in (("tiny (hidden 64, 2 layers)", (64, 2)), ("bigger (hidden 256, 8 layers)", (256, 8))):
            model = build_tiny_model(work / f"model-{size[0]}", hidden=size[0], layers=size[1])
            cfg = bench_config(model, data, work, samples, rejects, max_new_tokens, batch_size, device)
            results[label] = compare(cfg, work, label.split()[0])
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
