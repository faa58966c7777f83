"""`prefgen check-invariance`: generate's engine and model flags, a table, an exit status."""

from __future__ import annotations

import copy
import sys

import click

from prefgen.cli.generate import generate
from prefgen.cli.terminal import friendly_errors

EXIT_DIFFERENT = 4  # some unit's text depends on the batch or the prefix cache
# generate's own options (the same flags, help and defaults from config), in this order
SHARED = (
    "base_model",
    "adapter_path",
    "engine",
    "lora",
    "sft_data",
    "num_rejects",
    "seed",
    "max_new_tokens",
    "temperature",
    "top_p",
    "system",
    "device",
    "batch_size",
    "max_batch_tokens",
    "max_model_len",
    "gpu_memory_utilization",
    "batch_invariant",
)


@click.command("check-invariance")
@click.option("--samples", type=int, default=2, show_default=True, help="Records whose units are compared.")
@friendly_errors
def check_invariance(samples, **options):
    """Whether each unit's text is the same alone, in a full batch, with its prompt's prefix
    cached or not, and (vllm) with --batch-invariant off and on, on this machine.

    A resumed run regenerates the units that were not committed, in other batches: where every
    text here is identical, it writes the same bytes as an uninterrupted run. The exit status
    (0 identical, 4 some differ) judges the mode --batch-invariant names; vllm runs both modes
    and reports the invariant one's cost in units/s.

    \b
    Example:
      prefgen check-invariance --engine vllm --base-model /models/qwen \\
        --adapter-path /saves/lora --sft-data data.json --batch-size 64 --max-new-tokens 512
    """
    from prefgen.config import GenerateConfig
    from prefgen.engines.invariance import check_invariance as run_check

    if samples < 1:
        raise click.BadParameter("must be at least 1", param_hint="--samples")
    cfg = GenerateConfig.from_flags(output="", **options)
    results = run_check(cfg, samples)
    judged_mode = f"invariant {'on' if cfg.batch_invariant else 'off'}"
    judged = next(r for r in results if r.mode in ("transformers", judged_mode))
    click.echo(report(results, cfg))
    differing = judged.differing()
    units = len(judged.texts["alone"])
    flag = " with --batch-invariant" if cfg.batch_invariant else ""
    if differing:
        click.echo(
            f"{len(differing)} of {units} units differ{flag}: a resumed run may write other text for the units "
            "that were not committed when it stopped (none is lost or written twice)."
        )
        sys.exit(EXIT_DIFFERENT)
    click.echo(
        f"All {units} units identical under every condition{flag}: here, a resumed run writes the same "
        "bytes as an uninterrupted one."
    )


def report(results: list, cfg) -> str:
    """The table: one row per mode and unit, `same` or `DIFFERS` against the unit alone."""
    first = next(r for r in results if not r.error)
    lines = [f"Engine {cfg.engine} on {first.device}; full batch: {first.rows} rows; same seed per unit everywhere."]
    if cfg.engine != "vllm":
        lines.append("(transformers: no prefix cache and no invariant mode; alone against the full batch only)")
    for result in results:
        conditions = list(result.texts)
        lines.append("")
        if result.error:
            lines.append(f"{result.mode:<14} could not run here: {result.error}")
            continue
        header = f"{result.mode:<14} {'sample/reject':<15}" + "".join(f"{c:<15}" for c in conditions[1:])
        lines.append(header.rstrip())
        for i, _ in enumerate(result.texts["alone"]):
            cells = ["same" if result.texts[c][i] == result.texts["alone"][i] else "DIFFERS" for c in conditions[1:]]
            unit = f"{i // cfg.num_rejects}/{i % cfg.num_rejects}"
            lines.append((f"{'':<14} {unit:<15}" + "".join(f"{cell:<15}" for cell in cells)).rstrip())
        lines.append(f"{'':<14} full batch: {result.units_per_s:.2f} units/s")
    if len(results) == 2 and results[0].units_per_s and results[1].units_per_s:
        cost = results[0].units_per_s / results[1].units_per_s
        lines.append(f"\nThe invariant mode's cost here: {cost:.2f}x the time of the default mode (full batch).")
    return "\n".join(lines)


_options = {param.name: param for param in generate.params}
_options["num_rejects"] = copy.copy(_options["num_rejects"])
_options["num_rejects"].default = 4  # rejects share their prompt: the prefix cache's case
check_invariance.params[:0] = [_options[name] for name in SHARED]
