"""Parameter types and the option groups several commands share. Choices and defaults come
from prefgen.config, which owns them: nothing here spells a default or a choice again."""

from __future__ import annotations

import dataclasses

import click

from prefgen.config import (
    ANSWER_MODES,
    DEDUP_MODES,
    DEFAULT_DB_VARIANTS,
    DEFAULT_EVALUATOR,
    DEFAULT_GOLD_SUSPECT,
    EQUIVALENCE_MODES,
    EVALUATORS,
    FALLBACK_MODES,
    GOLD_SUSPECT_MODES,
    CheckPolicy,
    GenerateConfig,
)
from prefgen.errors import PrefgenError

_DEFAULTS = {
    f.name: f.default
    for cls in (GenerateConfig, CheckPolicy)
    for f in dataclasses.fields(cls)
    if f.default is not dataclasses.MISSING
}


def default(name: str):
    """The default of GenerateConfig's (or CheckPolicy's) field `name`: the one place a generate
    setting's default lives. The settings in config.UNSET_FIELDS have none on the command line:
    left out, they are decided by the ledger (resume/settings.py)."""
    return _DEFAULTS[name]


class OptionalFloat(click.ParamType):
    """A number, or nothing (a config file's null, as `ledger status --as-config` prints an unset
    setting): the setting's default."""

    name = "float"

    def convert(self, value, param, ctx):
        if value is None or value == "":
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid float.", param, ctx)


class BatchSize(click.ParamType):
    """A positive integer or `auto`."""

    name = "INTEGER|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)


class DedupMode(click.ParamType):
    """exact or sql; true/false from a config file mean exact / off."""

    name = "|".join(DEDUP_MODES)

    def convert(self, value, param, ctx):
        if value is True:
            return DEDUP_MODES[0]
        if value in (False, None, ""):
            return ""
        if value in DEDUP_MODES:
            return value
        self.fail(f"{value!r} is not {' or '.join(DEDUP_MODES)}", param, ctx)


def load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Read a YAML run config into the command's defaults: flags on the command line win."""
    if not value:
        return value
    from prefgen.config import read_config_file

    try:
        settings = read_config_file(value, {p.name for p in ctx.command.params if p.name != "config"})
    except PrefgenError as exc:
        raise click.BadParameter(f"{exc} ({exc.hint})" if exc.hint else str(exc), ctx, param) from exc
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


def _apply(command, options: list):
    for option in reversed(options):
        command = option(command)
    return command


def check_options(command):
    """The flags that turn execution verdicts into keep / drop, shared by generate, verify and pair."""
    return _apply(
        command,
        [
            click.option(
                "--db-field",
                default=default("db_field"),
                show_default=True,
                help="Record field holding the database id.",
            ),
            click.option(
                "--evaluator",
                type=click.Choice(EVALUATORS),
                default=None,
                help="Whose execution accuracy decides: an answer is correct (chosen, never a reject) when every "
                "selected evaluator scores it right, wrong (a reject) when every one scores it wrong, disputed "
                f"otherwise [default: {DEFAULT_EVALUATOR}; a ledger made before evaluators keeps its lenient rule].",
            ),
            click.option(
                "--equivalence",
                type=click.Choice(EQUIVALENCE_MODES),
                default=default("equivalence"),
                show_default=True,
                help="Drop rejects whose result equals the gold's under this comparison.",
            ),
            click.option(
                "--drop-timeout/--keep-timeout",
                default=None,
                help="Whether an answer that ran out of time is dropped or kept as a reject "
                "[default: kept, with on-policy pairs dropped].",
            ),
            click.option(
                "--drop-unverifiable/--keep-unverifiable",
                default=None,
                help="Whether an answer that cannot be judged is dropped or kept as a reject "
                "[default: kept, with on-policy pairs dropped].",
            ),
            click.option(
                "--db-variants",
                type=int,
                default=None,
                help="Perturbed copies of each database (shuffled, thinned, duplicated rows) a correct answer must "
                f"also match the gold on; 0: off [default: {DEFAULT_DB_VARIANTS}; a ledger made before variants: 0].",
            ),
            click.option(
                "--db-variant-max-mb",
                type=float,
                default=default("db_variant_max_mb"),
                show_default=True,
                help="Databases larger than this are checked on the original only (with a warning).",
            ),
            click.option(
                "--gold-suspect",
                type=click.Choice(GOLD_SUSPECT_MODES),
                default=None,
                help="A sample whose gold fails, or whose executed answers mostly agree on another result, is "
                "flagged gold_suspect: keep its pairs (flagged) or skip them "
                f"[default: {DEFAULT_GOLD_SUSPECT}; a ledger made before gold checks: not checked].",
            ),
            click.option(
                "--suspect-share",
                type=float,
                default=default("suspect_share"),
                show_default=True,
                help="A gold is suspect when more than this share of a sample's executed answers (at least 2) "
                "agree on one result the gold does not give.",
            ),
            click.option(
                "--time-limit", type=float, default=default("time_limit"), show_default=True, help="Seconds per query."
            ),
            click.option(
                "--max-rows", type=int, default=default("max_rows"), show_default=True, help="Rows fetched per query."
            ),
        ],
    )


def pair_options(command):
    """How on-policy pairs are made, shared by generate and pair."""
    return _apply(
        command,
        [
            click.option(
                "--answer",
                type=click.Choice(ANSWER_MODES),
                default=default("answer"),
                show_default=True,
                help="On-policy pairs hold the extracted SQL, or the whole answer (reasoning included).",
            ),
            click.option(
                "--fallback",
                type=click.Choice(FALLBACK_MODES),
                default=default("fallback"),
                show_default=True,
                help="A sample with wrong answers but no correct one: no pair, or the gold as chosen (--answer sql).",
            ),
        ],
    )
