"""`prefgen generate`: its flags, and what it prints when the run returns."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from prefgen.cli.options import (
    BatchSize,
    DedupMode,
    OptionalFloat,
    check_options,
    default,
    load_config,
    pair_options,
)
from prefgen.cli.terminal import EXIT_INCOMPLETE, friendly_errors
from prefgen.config import DEDUP_MODES, ENGINE_NAMES, EXECUTORS, LORA_MODES, PAIR_MODES


@click.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=load_config,
    help="YAML file of settings (keys are the flag names); flags override it.",
)
@click.option("--base-model", required=True, help="Model directory (or hub id where online).")
@click.option(
    "--engine",
    type=click.Choice(ENGINE_NAMES),
    default=default("engine"),
    show_default=True,
    help="transformers (prefgen's own decode loop) or vllm (pip install 'prefgen[vllm]').",
)
@click.option(
    "--batch-invariant",
    is_flag=True,
    default=default("batch_invariant"),
    help="vllm: vLLM's batch-invariant mode (VLLM_BATCH_INVARIANT=1), for the same text whatever the batch; "
    "whether it holds for your GPU and model, `prefgen check-invariance` tells.",
)
@click.option(
    "--max-model-len",
    type=int,
    default=default("max_model_len"),
    help="Context a prompt must fit (a longer one is recorded too_long); vllm: also what the KV cache is sized for "
    "[default: the model's].",
)
@click.option(
    "--gpu-memory-utilization",
    type=float,
    default=default("gpu_memory_utilization"),
    show_default=True,
    help="vllm: share of GPU memory for weights and KV cache.",
)
@click.option(
    "--lora",
    type=click.Choice(LORA_MODES),
    default=default("lora"),
    show_default=True,
    help="vllm: apply the adapter natively per request (no copy of the model) or merge it into a cached "
    "copy; auto: native on a GPU where vLLM serves the model's LoRA, merge otherwise.",
)
@click.option("--adapter-path", default=default("adapter_path"), help="PEFT LoRA adapter directory; empty for none.")
@click.option(
    "--reuse-answers",
    default=default("reuse_answers"),
    metavar="OLD",
    help="Take each answer from the ledger of an earlier run (its output or ledger, finished or not) made with "
    "the same model, adapter, prompt and sampling; generate only what it lacks (no model when it has all).",
)
@click.option("--sft-data", required=True, help="Alpaca records: a JSON array (.json) or JSON Lines (.jsonl).")
@click.option(
    "--output",
    required=True,
    help="JSONL file the pairs are appended to. A .json name gets a JSON array, written when the run "
    "is complete; the JSONL is then kept beside it as NAME.journal.jsonl.",
)
@click.option("--ledger", default=default("ledger"), help="Ledger path [default: OUTPUT.ledger.sqlite].")
@click.option(
    "--num-rejects", type=int, default=default("num_rejects"), show_default=True, help="Rejects per sample (< 1000)."
)
@click.option(
    "--dedup-rejects",
    type=DedupMode(),
    is_flag=False,
    flag_value=DEDUP_MODES[0],
    default=default("dedup_rejects"),
    help="Do not write a reject equal to an earlier one of the sample: exact text (the default "
    "when given alone) or sql (equal after SQL normalization).",
)
@click.option(
    "--seed", type=int, default=default("seed"), show_default=True, help="Unit seed = seed + sample*1000 + reject."
)
@click.option(
    "--max-new-tokens",
    type=int,
    default=default("max_new_tokens"),
    show_default=True,
    help="New tokens per answer at most. Raised on an existing run, only the answers cut at the old cap are"
    " generated again (the run so far is moved to OUTPUT.capN); lowered, refused.",
)
@click.option(
    "--temperature", type=float, default=default("temperature"), show_default=True, help="0 means greedy decoding."
)
@click.option("--top-p", type=float, default=default("top_p"), show_default=True)
@click.option(
    "--max-samples",
    type=int,
    default=default("max_samples"),
    show_default=True,
    help="Use the first N records (0 = all).",
)
@click.option(
    "--batch-size",
    type=BatchSize(),
    default=default("batch_size"),
    show_default=True,
    help="Rows per generation call, or 'auto' (the largest that fits, backing off on OOM); vllm: "
    "sequences in the engine at once (max_num_seqs), auto: vLLM's offline default.",
)
@click.option(
    "--max-batch-tokens",
    type=int,
    default=default("max_batch_tokens"),
    show_default=True,
    help="Bound on rows x (longest prompt + max-new-tokens) per batch (0 = none); vllm: also tokens per "
    "engine step (max_num_batched_tokens), 0: vLLM's offline default.",
)
@click.option(
    "--lookahead",
    type=int,
    default=default("lookahead"),
    show_default=True,
    help="Samples per window in which units are grouped by prompt length (1 = none).",
)
@click.option(
    "--device",
    default=default("device"),
    show_default=True,
    help="auto (CUDA where there is one, else the CPU), cuda, cuda:N or cpu.",
)
@click.option("--system", default=default("system"), help="Optional system prompt.")
@click.option(
    "--overlap/--no-overlap",
    default=default("overlap"),
    help="Judge and commit a batch while the next one generates [default: on for CUDA, off on CPU].",
)
@click.option(
    "--rank",
    type=int,
    default=default("rank"),
    envvar="RANK",
    show_default=True,
    help="This process's share: samples with index % world-size == rank (set by torchrun).",
)
@click.option(
    "--world-size",
    type=int,
    default=default("world_size"),
    envvar="WORLD_SIZE",
    show_default=True,
    help="Number of processes sharing the run (set by torchrun).",
)
@click.option(
    "--max-attempts",
    type=int,
    default=default("max_attempts"),
    help="Keep sampling a sample until it has --num-rejects kept rejects or this many attempts "
    "[default: --num-rejects, i.e. no further attempts].",
)
@click.option(
    "--db-root",
    default=default("db_root"),
    help="Execute gold and rejects against DIR/<db_id>/<db_id>.sqlite and keep only rejects "
    "with a different result (verdict in the ledger and the JSONL).",
)
@check_options
@click.option(
    "--allow-missing-db",
    is_flag=True,
    default=default("allow_missing_db"),
    help="Start although --db-root lacks databases the records name (their answers are judged unverifiable); "
    "without it such a start is refused, naming them.",
)
@click.option(
    "--exec-workers",
    type=int,
    default=default("exec_workers"),
    help="Processes executing SQL for --db-root [default: min(4, cores/2)].",
)
@click.option(
    "--pairs",
    type=click.Choice(PAIR_MODES),
    default=default("pairs"),
    show_default=True,
    help="gold: the gold query is chosen; onpolicy: the model's own correct answer is chosen and "
    "its wrong one rejected (needs --db-root).",
)
@pair_options
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default=default("executor"),
    show_default=True,
    help="local: this process; ray: one run over a Ray cluster (pip install 'prefgen[ray]'), blocks of "
    "samples handed to engine workers as they are free (docs/scale.md).",
)
@click.option(
    "--ray-address",
    default=default("ray_address"),
    metavar="ADDR",
    help="ray: the cluster to join [default: RAY_ADDRESS; unset: a Ray of the run's own on this machine].",
)
@click.option(
    "--workers",
    default=default("workers"),
    metavar="N|MIN-MAX",
    help="ray: engine workers; the run starts once MIN are placed and takes up to MAX as the cluster "
    "grows [default: 1 up to what the cluster's GPUs hold].",
)
@click.option(
    "--gpus-per-worker",
    type=OptionalFloat(),
    default=default("gpus_per_worker"),
    help="ray: GPUs Ray reserves for each engine worker [default: 0 with --device cpu, or with --device auto on "
    "a cluster without GPUs; else 1].",
)
@click.option(
    "--block-units",
    type=int,
    default=default("block_units"),
    help="ray: units per block a worker takes (whole samples) [default: 4 batches].",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@friendly_errors
def generate(no_progress, **options):
    """Generate rejects for every SFT record; run it again to resume.

    \b
    Example:
      prefgen generate --base-model /models/qwen --sft-data data.json \\
        --output pairs.jsonl --num-rejects 3 --batch-size 16 --device cuda
      prefgen generate --config run.yaml --batch-size 4
    """
    from prefgen.config import GenerateConfig
    from prefgen.executors import generate as run_generate

    cfg = GenerateConfig.from_flags(**options)
    summary = run_generate(cfg, sys.argv, show_progress=not no_progress)
    if summary.adopted:
        click.echo(
            f"{cfg.target_path} was begun as JSON Lines by an earlier prefgen: continuing it as {summary.output}"
        )
    counts = ", ".join(f"{status} {n}" for status, n in sorted(summary.counts.items()))
    if summary.done_now == 0:
        click.echo(f"Nothing to do: all {summary.total_units} units are already in the ledger ({counts}).")
    else:
        click.echo(
            f"Generated {summary.done_now} units; {summary.done_before + summary.done_now}"
            f"/{summary.total_units} done ({counts})."
        )
    answers = summary.answers
    if answers and (answers["reused"] or answers["regenerated"]):  # --reuse-answers, or a raised cap
        from prefgen.ledger.inspect import reuse_line

        click.echo(reuse_line(answers))
    if cfg.db_root:
        from prefgen.ledger.inspect import golds_line

        unchecked = "Golds    not checked (a ledger made before gold checks)"
        click.echo(golds_line(summary.golds) if summary.golds else unchecked)
    click.echo(f"Output: {where(cfg.target_path, summary.output, summary.finished)}\nLedger: {summary.ledger}")
    if not summary.finished:
        click.echo("Some units could not be generated (oom/error): run the same command again to retry them.", err=True)
        sys.exit(EXIT_INCOMPLETE)


def where(target: Path, journal: Path, finished: bool) -> str:
    """Where the pairs are: the output, and for a .json output its JSON Lines journal too."""
    if target == journal:
        return str(journal)
    if finished:
        return f"{target} (a JSON array; its JSON Lines journal: {journal})"
    return f"{journal} (JSON Lines; {target} is written once the run is complete)"
