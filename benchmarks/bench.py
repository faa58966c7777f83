"""`make bench`: measure prefgen against the ways users generate without it.

The same work units are generated three ways in one process, so the ratios hold on a noisy
machine: (a) `prefgen generate` end to end (ledger, JSONL, judging, with the model already
loaded); (b) the old script: one `model.generate` call per reject, seeded through the global
RNG; (c) bare batched `model.generate` on the same batches, with nothing written. Then:
prompts of mixed lengths (length grouping on and off), skewed output lengths (finished-row
dropping on and off), generation with execution verdicts (--db-root) against without,
verdicts with database variants (--db-variants) against without, and start-up on a
1,000,000-record input against a 100-record one.

This is a measurement script, not a test: it prints figures and ratios.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click

from prefgen.config import GenerateConfig
from prefgen.flow.plan import plan_units
from prefgen.flow.records import iter_records

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "spider_en" / "department_store_alpaca.json"
DB_ROOT = SAMPLE.parent / "db"
VERDICT_WORK = 4  # the verdict comparison runs 4x --samples
LAST_OVERHEAD = {"share": 0.0}  # of the last timed_prefgen: wall time spent outside generate calls
WORDS = "select name from table where order by group count join on and or customer product store id".split()


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def sample_records(count: int) -> list[dict]:
    """`count` records cycled from the shipped Spider sample."""
    base = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return [base[i % len(base)] for i in range(count)]


def mixed_records(count: int, rng: random.Random) -> list[dict]:
    """Records whose prompts run from about 10 to about 1,000 tokens."""
    return [
        {
            "instruction": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 900))),
            "input": "",
            "output": "SELECT 1",
        }
        for _ in range(count)
    ]


def bench_config(model, data: Path, work: Path, samples, rejects, max_new_tokens, batch_size, device) -> GenerateConfig:
    """The settings every comparison starts from: sampling at 0.7 / 0.9, seed 1234."""
    return GenerateConfig.from_flags(
        base_model=str(model),
        sft_data=str(data),
        output=str(work / "unused.jsonl"),
        num_rejects=rejects,
        max_new_tokens=max_new_tokens,
        temperature=0.7,
        top_p=0.9,
        max_samples=samples,
        batch_size=batch_size,
        device=device,
        seed=1234,
    )


def timed_prefgen(cfg: GenerateConfig, engine) -> tuple[float, int, int]:
    """(seconds, units, new tokens) of an end-to-end prefgen run with a loaded engine."""
    from prefgen.executors import generate
    from prefgen.ledger.store import Ledger

    started = time.perf_counter()
    summary = generate(cfg, ["bench"], show_progress=False, engine=engine)
    seconds = time.perf_counter() - started
    ledger = Ledger(cfg.ledger_path, readonly=True)
    tokens = ledger.totals()["new_tokens"]
    generating = ledger.generation_seconds()
    ledger.close()
    LAST_OVERHEAD["share"] = 1 - generating / seconds
    return seconds, summary.done_now, tokens


def hf_generate(engine, rows: list[list[int]], cfg: GenerateConfig):
    """Plain transformers sampling on left-padded rows; returns the new tokens per row."""
    import torch
    from transformers import GenerationConfig

    ids, mask = engine._pad(rows)
    config = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.temperature > 0,
        temperature=cfg.temperature or None,
        top_p=cfg.top_p,
        top_k=None,
        eos_token_id=engine.eos_ids,
        pad_token_id=engine.pad_id,
    )
    with torch.inference_mode():
        out = engine.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return out[:, ids.shape[1] :]


def new_token_count(engine, generated) -> int:
    count = 0
    for row in generated.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in engine.eos_ids), len(row))
        count += cut
    return count


def timed_old_script(engine, cfg: GenerateConfig) -> tuple[float, int, int]:
    """(b): one generate call per reject, the global RNG seeded with the unit's seed."""
    import torch

    units = list(plan_units(iter_records(cfg.sft_data, cfg.max_samples), cfg.num_rejects, cfg.seed))
    started, tokens = time.perf_counter(), 0
    for unit in units:
        torch.manual_seed(unit.seed)
        tokens += new_token_count(engine, hf_generate(engine, [engine.prompt_ids(unit)], cfg))
    return time.perf_counter() - started, len(units), tokens


def timed_bare_batches(engine, cfg: GenerateConfig) -> tuple[float, int, int]:
    """(c): batched generate on prefgen's batches, nothing recorded or written."""
    from prefgen.flow.batching import batches

    units = plan_units(iter_records(cfg.sft_data, cfg.max_samples), cfg.num_rejects, cfg.seed)
    planned = list(
        batches(units, cfg.batch_size, cfg.max_batch_tokens, cfg.lookahead, engine.prompt_length, cfg.max_new_tokens)
    )
    started, tokens, count = time.perf_counter(), 0, 0
    for batch in planned:
        tokens += new_token_count(engine, hf_generate(engine, [engine.prompt_ids(u) for u in batch], cfg))
        count += len(batch)
    return time.perf_counter() - started, count, tokens


def row(name: str, seconds: float, units: int, tokens: int) -> dict:
    return {
        "name": name,
        "seconds": seconds,
        "units": units,
        "tokens": tokens,
        "units_per_s": units / seconds,
        "tokens_per_s": tokens / seconds,
    }


def print_table(title: str, rows: list[dict], ratios: list[tuple[str, float, str]]) -> None:
    click.echo(f"\n{title}")
    click.echo(f"  {'way':<44} {'s':>7} {'units/s':>9} {'tok/s':>9}")
    for r in rows:
        click.echo(f"  {r['name']:<44} {r['seconds']:>7.2f} {r['units_per_s']:>9.2f} {r['tokens_per_s']:>9.1f}")
    for name, value, target in ratios:
        click.echo(f"  {name:<44} {value:>7.2f}x  {target}")


def main_comparison(engine, cfg: GenerateConfig, work: Path) -> dict:
    a = row("(a) prefgen generate, end to end", *timed_prefgen(replace(cfg, output=str(work / "a.jsonl")), engine))
    overhead = LAST_OVERHEAD["share"]  # (a) runs without overlap on CPU: the CPU work's own cost
    overlapped = row(
        "(a) overlapped (commit while generating)",
        *timed_prefgen(replace(cfg, output=str(work / "a0.jsonl"), overlap=True), engine),
    )
    b = row("(b) old script: generate per reject", *timed_old_script(engine, cfg))
    c = row("(c) bare batched model.generate", *timed_bare_batches(engine, cfg))
    ratios = [
        ("(a)/(b) units/s", a["units_per_s"] / b["units_per_s"], "target >= 8"),
        ("(a)/(c) units/s", a["units_per_s"] / c["units_per_s"], "target >= 0.9"),
        ("overlapped / not (a)", overlapped["units_per_s"] / a["units_per_s"], "CPU: decides --overlap"),
    ]
    print_table("Main: same units three ways", [a, overlapped, b, c], ratios)
    click.echo(
        f"  (a) wall time outside generation (planning, judging, JSONL, ledger): {100 * overhead:.1f}%  target < 10%"
    )
    return {"rows": [a, overlapped, b, c], "ratios": {n: v for n, v, _ in ratios}, "overhead_share": overhead}


def grouping_comparison(engine, cfg: GenerateConfig, work: Path) -> dict:
    data = write_json(work / "mixed.json", mixed_records(cfg.max_samples, random.Random(0)))
    base = replace(cfg, sft_data=str(data))
    on = row(
        "prefgen, length grouping (lookahead 32)",
        *timed_prefgen(replace(base, output=str(work / "g1.jsonl"), lookahead=32), engine),
    )
    off = row(
        "prefgen, no grouping (lookahead 1)",
        *timed_prefgen(replace(base, output=str(work / "g0.jsonl"), lookahead=1), engine),
    )
    ratio = on["units_per_s"] / off["units_per_s"]
    print_table("Mixed prompt lengths (10 to 1,000 tokens)", [on, off], [("grouping on / off", ratio, "")])
    return {"rows": [on, off], "ratio": ratio}


def eos_prone_engine(engine, strength: float):
    """The same engine with the EOS row of lm_head scaled up, so output lengths are skewed."""
    import copy

    import torch

    skewed = copy.copy(engine)
    skewed.model = copy.deepcopy(engine.model)
    with torch.no_grad():
        weight = skewed.model.get_output_embeddings().weight
        generator = torch.Generator().manual_seed(0)
        direction = torch.randn(weight.shape[1], generator=generator)
        weight[engine.eos_ids[0]] = strength * direction / direction.norm() * weight.shape[1] ** 0.5 / 8
    return skewed


def dropping_comparison(engine, cfg: GenerateConfig, work: Path) -> dict:
    skewed = eos_prone_engine(engine, strength=3.0)
    skewed.drop_finished = True
    on = row("prefgen, finished rows dropped", *timed_prefgen(replace(cfg, output=str(work / "d1.jsonl")), skewed))
    skewed.drop_finished = False
    off = row(
        "prefgen, finished rows kept computing", *timed_prefgen(replace(cfg, output=str(work / "d0.jsonl")), skewed)
    )
    mean = on["tokens"] / on["units"]
    print_table(
        f"Skewed output lengths (mean {mean:.1f} of {cfg.max_new_tokens} new tokens)",
        [on, off],
        [("dropping on / off", on["units_per_s"] / off["units_per_s"], "")],
    )
    return {"rows": [on, off], "ratio": on["units_per_s"] / off["units_per_s"], "mean_new_tokens": mean}


class RealSqlAnswers:
    """The engine, generating as usual, but answering SQL that runs: a reject is the gold
    wrapped so that it needs executing (same rows, or cut to one row) or the model's own text
    (which SQLite refuses). The tiny model's random text alone would cost nothing to execute."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def answers(self, units, future):
        answers, backoffs = self.engine.answers(units, future)
        answers = [self.variant(unit, answer) for unit, answer in zip(units, answers, strict=True)]
        return answers, backoffs

    @staticmethod
    def variant(unit, answer):
        gold = unit.record.output.strip().rstrip(";")
        variants = (f"SELECT * FROM ({gold})", f"SELECT * FROM ({gold}) LIMIT 1", answer.text)
        return replace(answer, text=variants[unit.seed % len(variants)])


def verdict_comparison(engine, cfg: GenerateConfig, work: Path) -> dict:
    """Generation throughput with execution verdicts (--db-root, worker processes) and without."""
    from prefgen.ledger.store import Ledger

    answering = RealSqlAnswers(engine)
    samples = cfg.max_samples * VERDICT_WORK  # long enough that starting the workers is not the story
    data = write_json(work / "verdicts.json", sample_records(samples))
    cfg = replace(cfg, sft_data=str(data), max_samples=samples)
    plain = replace(cfg, output=str(work / "v0.jsonl"))
    checked = replace(cfg, output=str(work / "v1.jsonl"), db_root=str(DB_ROOT))
    runs = {"off": [], "on": []}
    for attempt in range(2):  # interleaved, the faster of two each: the first run warms caches
        for name, settings in (("off", plain), ("on", checked)):
            settings = replace(settings, output=f"{settings.output}.{attempt}")
            runs[name].append(timed_prefgen(settings, answering))
    off = row("prefgen, no execution", *min(runs["off"]))
    on = row("prefgen --db-root (verdicts in workers)", *min(runs["on"]))
    checked = replace(checked, output=f"{checked.output}.1")
    ledger = Ledger(checked.ledger_path, readonly=True)
    verdicts = ledger.verdict_counts()
    ledger.close()
    ratio = on["units_per_s"] / off["units_per_s"]
    print_table(
        "Execution verdicts while generating", [off, on], [("with / without --db-root", ratio, "target >= 0.9")]
    )
    click.echo("  verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())))
    return {"rows": [off, on], "ratio": ratio, "verdicts": verdicts}


VARIANT_KINDS = ("reformatted", "columns reordered", "DISTINCT dropped", "wrong filter")
_FLIPPED = {"GT": "LT", "LT": "GT", "GTE": "LTE", "LTE": "GTE", "EQ": "NEQ", "NEQ": "EQ"}


def gold_variants(gold: str) -> dict[str, str]:
    """Hand-made kinds of rejects of one gold query, where its shape allows them."""
    import sqlglot
    from sqlglot import exp

    variants = {"reformatted": " ".join(gold.split()).rstrip(";") + " ;"}
    try:
        tree = sqlglot.parse_one(gold, read="sqlite")
    except sqlglot.errors.SqlglotError:
        return variants
    if not isinstance(tree, exp.Select):
        return variants
    columns = tree.expressions
    if len(columns) >= 2 and not any(isinstance(c, exp.Star) for c in columns):
        reordered = tree.copy()
        reordered.set("expressions", [c.copy() for c in reversed(columns)])
        variants["columns reordered"] = reordered.sql(dialect="sqlite")
    if tree.args.get("distinct"):
        plain = tree.copy()
        plain.set("distinct", None)
        variants["DISTINCT dropped"] = plain.sql(dialect="sqlite")
    wrong = tree.copy()
    where = wrong.args.get("where")
    target = next((c for c in where.find_all(exp.Binary) if type(c).__name__ in _FLIPPED), None) if where else None
    if target is not None:
        flipped = getattr(exp, _FLIPPED[type(target).__name__])
        target.replace(flipped(this=target.this.copy(), expression=target.expression.copy()))
        variants["wrong filter"] = wrong.sql(dialect="sqlite")
    return variants


def verify_variants(work: Path) -> dict:
    """`prefgen verify` on hand-made variants of the shipped real gold queries (English and
    German Spider): the time it takes, and the verdicts per kind of variant."""
    from collections import Counter

    from prefgen.config import CheckPolicy
    from prefgen.sql.workers import Checker
    from prefgen.tools.verify import judge_pair, verify_file

    sets = {
        "en": (SAMPLE, DB_ROOT),
        "de": (SAMPLE.parent.parent / "spider_de" / "spider_de_alpaca.json", SAMPLE.parent.parent / "spider_de" / "db"),
    }
    table: Counter = Counter()
    scores: Counter = Counter()  # (kind, evaluator) -> variants it scores right
    seconds, kept, dropped, pairs, golds, suspects = 0.0, Counter(), Counter(), 0, set(), 0
    for name, (data, root) in sets.items():
        lines = []
        checker = Checker(CheckPolicy(str(root)))
        for record in json.loads(data.read_text(encoding="utf-8")):
            golds.add(record["output"])
            for kind, sql in gold_variants(record["output"]).items():
                lines.append({**record, "chosen": record["output"], "rejected": sql})
                verdict = judge_pair(checker, record["db_id"], record["output"], sql)
                table[(kind, verdict.verdict)] += 1
                scores.update({(kind, "spider"): verdict.spider is True, (kind, "bird"): verdict.bird is True})
        checker.close()
        source = write_jsonl(work / f"variants_{name}.jsonl", lines)
        started = time.perf_counter()
        summary = verify_file(str(source), str(work / f"verified_{name}.jsonl"), CheckPolicy(str(root)))
        seconds += time.perf_counter() - started
        kept.update(summary.kept)
        dropped.update(summary.dropped)
        suspects += len(summary.suspects)
        pairs += len(lines)
    click.echo(f"\nprefgen verify: {pairs} variants of {len(golds)} real gold queries (Spider en, de): {seconds:.2f} s")
    click.echo(f"  kept {dict(sorted(kept.items()))}; dropped {dict(sorted(dropped.items()))}")
    click.echo(f"  suspect golds: {suspects} samples")
    for kind in VARIANT_KINDS:
        row_ = {verdict: n for (k, verdict), n in sorted(table.items()) if k == kind}
        right = f"spider right {scores[(kind, 'spider')]}, bird right {scores[(kind, 'bird')]}"
        click.echo(f"  {kind:<18} {sum(row_.values()):>4}: {row_}; {right}")
    return {
        "pairs": pairs,
        "golds": len(golds),
        "seconds": seconds,
        "kept": dict(kept),
        "dropped": dict(dropped),
        "by_kind": {f"{k}: {v}": n for (k, v), n in sorted(table.items())},
        "right_by_kind": {f"{k}: {e}": n for (k, e), n in sorted(scores.items())},
        "suspect_golds": suspects,
    }


def measure_start(model: str, data: Path, out: Path, device: str) -> tuple[float, int]:
    """(seconds, peak RSS in KiB) of a fresh `prefgen generate --max-samples 100` process."""
    args = [
        "generate",
        "--base-model",
        model,
        "--sft-data",
        str(data),
        "--output",
        str(out),
        "--max-samples",
        "100",
        "--max-new-tokens",
        "1",
        "--batch-size",
        "50",
        "--device",
        device,
        "--no-progress",
    ]
    probe = (
        "import resource, runpy, sys, time\n"
        f"sys.argv = ['prefgen'] + {args!r}\n"
        "t = time.perf_counter()\n"
        "try:\n    runpy.run_module('prefgen', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    seconds, rss = done.stdout.split()[-2:]
    return float(seconds), int(rss)


def startup_comparison(model: str, device: str, work: Path) -> dict:
    small = write_json(work / "small.json", sample_records(100))
    big = work / "big.json"
    record = json.dumps(
        {
            "instruction": "Show the names of all stores.",
            "input": "",
            "output": "SELECT name FROM store",
            "db_id": "department_store",
        }
    )
    with open(big, "w", encoding="utf-8") as handle:
        handle.write("[" + ",".join([json.dumps(r) for r in sample_records(100)]))
        for _ in range(1_000_000 - 100):
            handle.write("," + record)
        handle.write("]")
    small_s, small_rss = measure_start(model, small, work / "s.jsonl", device)
    big_s, big_rss = measure_start(model, big, work / "b.jsonl", device)
    click.echo(
        f"\nStart-up: 1,000,000-record input ({big.stat().st_size / 1e6:.0f} MB) vs 100 records, --max-samples 100"
    )
    click.echo(f"  100 records:       {small_s:6.2f} s, peak RSS {small_rss / 1024:7.1f} MiB")
    click.echo(f"  1,000,000 records: {big_s:6.2f} s, peak RSS {big_rss / 1024:7.1f} MiB")
    click.echo(f"  ratio time {big_s / small_s:.2f}x, memory {big_rss / small_rss:.2f}x  target <= 1.2")
    return {
        "time_ratio": big_s / small_s,
        "memory_ratio": big_rss / small_rss,
        "small_s": small_s,
        "big_s": big_s,
        "small_rss_kib": small_rss,
        "big_rss_kib": big_rss,
    }


def variants_comparison(work: Path, counts: tuple[int, ...] = (0, 1, 3, 5)) -> dict:
    """Verdict throughput with --db-variants K against K = 0, on the hand-made variants of the
    shipped real golds (English and German Spider): the one-off build of each database's
    variants (an empty cache), then judging every pair again with the variants built, and how
    many answers equivalent on the original a variant tells apart."""
    import os
    from collections import Counter

    from prefgen.config import DEFAULT_DB_VARIANTS, CheckPolicy
    from prefgen.sql.workers import Checker

    german = SAMPLE.parent.parent / "spider_de"
    sets = [(SAMPLE, DB_ROOT), (german / "spider_de_alpaca.json", german / "db")]
    work_items = []  # (db root, db id, gold, candidate)
    for data, root in sets:
        for record in json.loads(data.read_text(encoding="utf-8")):
            for sql in gold_variants(record["output"]).values():
                work_items.append((str(root), record["db_id"], record["output"], sql))
    dbs = len({(root, db) for root, db, _, _ in work_items})
    click.echo(f"\n--db-variants: {len(work_items)} verdicts (rewrites of real golds, {dbs} databases, Spider en+de)")
    results, base = {}, None
    for count in counts:
        os.environ["PREFGEN_VARIANT_CACHE"] = str(work / f"variant-cache-{count}")
        checkers = {root: Checker(CheckPolicy(root, db_variants=count)) for root, _, _, _ in work_items}
        started = time.perf_counter()
        for root, db in {(root, db) for root, db, _, _ in work_items} if count else ():
            checkers[root].variants.of(db, Path(root) / db / f"{db}.sqlite")  # the one-off build, timed apart
        build = time.perf_counter() - started
        started = time.perf_counter()
        verdicts = [checkers[root](db, gold, sql) for root, db, gold, sql in work_items]
        seconds = time.perf_counter() - started
        for checker in checkers.values():
            checker.close()
        outcome = Counter(v.verdict for v in verdicts)
        caught = sum(v.variant is not None for v in verdicts)
        base = base or seconds
        rate = len(work_items) / seconds
        click.echo(
            f"  K={count}: build {build:.2f} s once; {rate:,.0f} verdicts/s ({seconds:.2f} s), "
            f"{base / seconds:.2f}x of K=0; equivalent {outcome['equivalent']}, caught by a variant {caught}"
        )
        results[count] = {"build_seconds": build, "seconds": seconds, "per_second": rate, "caught": caught}
    default = results.get(DEFAULT_DB_VARIANTS)
    if default and 0 in results:
        ratio = default["per_second"] / results[0]["per_second"]
        click.echo(f"  default K={DEFAULT_DB_VARIANTS}: {ratio:.2f}x the verdict throughput of K=0")
    return {str(k): v for k, v in results.items()}


@click.command()
@click.option("--model", default="", help="Model directory [default: build the tiny model].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--samples", type=int, default=64, show_default=True)
@click.option("--rejects", type=int, default=4, show_default=True)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--skip-startup", is_flag=True, help="Skip the 1,000,000-record start-up measurement.")
@click.option(
    "--only",
    type=click.Choice(["main", "grouping", "dropping", "verdicts", "startup", "verify", "variants", "reuse", "ray"]),
    multiple=True,
    help="Run only these comparisons (repeatable) [default: all].",
)
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the figures as JSON.")
def main(model, device, samples, rejects, max_new_tokens, batch_size, skip_startup, only, json_out):
    """Benchmark prefgen (a) against the old script (b) and bare batched generate (c)."""
    import platform

    import torch

    from prefgen.engines import load_engine
    from prefgen.engines.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="prefgen-bench-") as tmp:
        work = Path(tmp)
        model = model or str(build_tiny_model(work / "tiny"))
        data = write_json(work / "data.json", sample_records(samples))
        cfg = bench_config(model, data, work, samples, rejects, max_new_tokens, batch_size, device)
        results = {}
        if not only or "verify" in only:
            results["verify"] = verify_variants(work)
        if not only or "variants" in only:
            results["variants"] = variants_comparison(work)
        comparisons = {
            "main": main_comparison,
            "grouping": grouping_comparison,
            "dropping": dropping_comparison,
            "verdicts": verdict_comparison,
        }
        if not only or set(only) & set(comparisons):
            engine = load_engine(cfg)
            click.echo(
                f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                f"torch {torch.__version__}, device {engine.device}"
            )
            click.echo(f"Work: {samples} samples x {rejects} rejects, {max_new_tokens} new tokens, batch {batch_size}")
            for name, compare in comparisons.items():
                if not only or name in only:
                    results[name] = compare(engine, cfg, work)
        if not only or "reuse" in only:
            from bench_reuse import reuse_comparison

            results["reuse"] = reuse_comparison(cfg, work)
        if "ray" in only:  # needs Ray: `make bench-ray` runs it in .venv-ray
            from bench_ray import ray_comparison

            results["ray"] = ray_comparison(cfg, work)
        if (not only and not skip_startup) or "startup" in only:
            results["startup"] = startup_comparison(model, device, work)
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
