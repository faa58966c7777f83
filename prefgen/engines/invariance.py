"""`prefgen check-invariance`: whether a unit's text depends on how it was generated, on the
user's own hardware, model and settings.

A resumed run regenerates the units that were not committed when it stopped, in other batches
than the first time. Every unit has its own seed, so its text can differ only where the engine's
arithmetic depends on the batch: the rows beside it, or, with vLLM, whether its prompt's prefix
came from the prefix cache. This module generates a few units (the probe: the first samples'
rejects) under each condition and compares their texts:

- alone (one row, the prefix cache emptied before each), then alone again with the prefix cached;
- in a full batch (the probe and other units, `--batch-size` rows), then again with the prefix cached;
- with vLLM, all of that with its batch-invariant mode off and on, each mode in a process of its
  own (VLLM_BATCH_INVARIANT is read when vLLM starts, and some of its modules keep it for the
  process's life), which also gives the mode's throughput cost (units/s of the full batch).

The transformers engine has neither a prefix cache nor an invariant mode: alone against the
full batch only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import islice

from prefgen.config import MAX_REJECTS, GenerateConfig
from prefgen.errors import ModelError, PrefgenError
from prefgen.flow.plan import plan_units
from prefgen.flow.records import iter_records

ALONE, ALONE_CACHED, BATCH, BATCH_CACHED = "alone", "alone, cached", "batch", "batch, cached"
REFERENCE = ALONE  # every other condition is compared with the unit generated alone


@dataclass
class ModeResult:
    """One engine's texts of the probe units under each condition, and its full batch's speed."""

    mode: str  # "transformers", "invariant off" or "invariant on"
    device: str = ""
    rows: int = 0  # the full batch's rows
    seconds: float = 0.0  # the full batch's wall time (prefix cache cold)
    texts: dict[str, list[str]] = field(default_factory=dict)  # condition -> one text per probe unit
    error: str = ""  # the mode could not run here (vLLM's invariant mode lacks kernels on some platforms)

    @property
    def units_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def differing(self) -> list[int]:
        """The probe units whose text is not the same under every condition."""
        reference = self.texts[REFERENCE]
        return [i for i, text in enumerate(reference) if any(texts[i] != text for texts in self.texts.values())]


def probe_units(cfg: GenerateConfig, samples: int) -> list:
    """The units compared: the first `samples` records' `num_rejects` units each."""
    return list(plan_units(iter_records(cfg.sft_data, samples), cfg.num_rejects, cfg.seed))


def filler_units(cfg: GenerateConfig, probe: list, count: int) -> list:
    """`count` other units to fill the batch: the next records' units, then further rejects of
    the probe's records where the file is short."""
    if count <= 0:
        return []
    records = list(islice(iter_records(cfg.sft_data), len({u.sample_index for u in probe}) + count))
    rejects = min(cfg.num_rejects + -(-count // len(records)), MAX_REJECTS - 1)
    taken = {(u.sample_index, u.reject_index) for u in probe}
    others = (u for u in plan_units(records, rejects, cfg.seed) if (u.sample_index, u.reject_index) not in taken)
    return list(islice(others, count))


def measure(cfg: GenerateConfig, samples: int, mode: str) -> ModeResult:
    """Load the engine and generate the probe under each condition (in this process)."""
    from prefgen.engines import load_engine

    probe = probe_units(cfg, samples)
    engine = load_engine(cfg)
    result = ModeResult(mode, engine.device)
    try:
        vllm = cfg.engine == "vllm"

        def texts(units: list) -> list[str]:
            answers, _ = engine.answers(units, engine.start(units))
            return [answer.text for answer in answers]

        def empty_cache() -> None:
            if vllm:
                engine.call(lambda llm: llm.reset_prefix_cache()).result()

        rows = cfg.batch_size
        if rows == "auto":
            rows = engine.find_batch_size(max(map(engine.prompt_length, probe)))
        batch = probe + filler_units(cfg, probe, rows - len(probe))
        result.rows = len(batch)
        alone = []
        for unit in probe:
            empty_cache()
            alone += texts([unit])
        result.texts[ALONE] = alone
        if vllm:
            result.texts[ALONE_CACHED] = [text for unit in probe for text in texts([unit])]
        empty_cache()
        started = time.perf_counter()
        result.texts[BATCH] = texts(batch)[: len(probe)]
        result.seconds = time.perf_counter() - started
        if vllm:
            result.texts[BATCH_CACHED] = texts(batch)[: len(probe)]
    finally:
        engine.close()
    return result


def measure_in_process_of_its_own(cfg: GenerateConfig, samples: int, mode: str) -> ModeResult:
    """`measure` in a new Python process (its vLLM reads VLLM_BATCH_INVARIANT afresh, and its
    memory is freed when it ends); its result comes back as JSON."""
    from prefgen.runtime.processes import guard_children

    guard_children()  # the measuring process dies with this one, even under kill -9
    with tempfile.TemporaryDirectory(prefix="prefgen-invariance-") as tmp:
        out = os.path.join(tmp, "result.json")
        job = {"settings": cfg.settings(), "samples": samples, "mode": mode, "out": out}
        process = subprocess.run(
            [sys.executable, "-m", "prefgen.engines.invariance", json.dumps(job)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        answer = json.loads(open(out).read()) if os.path.exists(out) else {}
    if "failure" in answer:
        raise ModelError(answer["failure"], hint=answer.get("hint", ""))
    if process.returncode or "texts" not in answer:
        tail = "\n".join(process.stderr.strip().splitlines()[-8:])
        raise ModelError(f"the {mode} measurement failed (exit status {process.returncode}):\n{tail}")
    return ModeResult(**answer)


def check_invariance(cfg: GenerateConfig, samples: int) -> list[ModeResult]:
    """Each mode's results: the transformers engine's, or vLLM's with its invariant mode off and
    on; the mode `--batch-invariant` does not name may fail to start and is then reported so."""
    if cfg.engine != "vllm":
        return [measure(cfg, samples, "transformers")]
    results = []
    for on, state in ((False, "off"), (True, "on")):
        try:
            mode_cfg = dataclasses.replace(cfg, batch_invariant=on)
            results.append(measure_in_process_of_its_own(mode_cfg, samples, f"invariant {state}"))
        except ModelError as exc:
            if on == cfg.batch_invariant:
                raise
            results.append(ModeResult(f"invariant {state}", error=str(exc).splitlines()[0]))
    return results


def main() -> None:
    """`python -m prefgen.engines.invariance JOB`: one mode's measurement, for `measure_in_process_of_its_own`."""
    import logging

    job = json.loads(sys.argv[1])
    logging.getLogger("prefgen").setLevel(logging.WARNING)
    try:
        result = dataclasses.asdict(measure(GenerateConfig.from_flags(**job["settings"]), job["samples"], job["mode"]))
    except PrefgenError as exc:
        result = {"failure": str(exc), "hint": exc.hint}
    with open(job["out"], "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
