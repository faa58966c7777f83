"""`bench.py --only reuse`: what --reuse-answers saves, and what the identity checks cost.

(a) the original generation of N samples x R rejects, end to end (model loaded by the run);
(b) the same units re-judged (--dedup-rejects exact) with --reuse-answers: no model is loaded;
(c) identity.model_identity on a model directory of realistic shape: four 10 GB safetensors
    shards (sparse files: only their headers are written) beside the tiny model's config and
    tokenizer files; the tensors are never read, so the cost is the small files and the headers.
"""

from __future__ import annotations

import shutil
import statistics
import struct
import time
from dataclasses import replace
from pathlib import Path

import click
import orjson

SHARD_BYTES = 10 * 1024**3


def sparse_model_dir(model: str, directory: Path, shards: int = 4) -> Path:
    """A copy of `model`'s small files with `shards` sparse 10 GB safetensors shards and an index."""
    directory.mkdir(parents=True, exist_ok=True)
    for child in Path(model).iterdir():
        if child.is_file() and not child.name.endswith(".safetensors"):
            shutil.copy(child, directory / child.name)
    weight_map = {}
    for index in range(shards):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {
            f"model.layers.{index}.w{t}": {
                "dtype": "BF16",
                "shape": [8192, 8192],
                "data_offsets": [t * 2**27, (t + 1) * 2**27],
            }
            for t in range(64)
        }
        header = orjson.dumps(tensors)
        with (directory / name).open("wb") as handle:
            handle.write(struct.pack("<Q", len(header)) + header)
            handle.truncate(SHARD_BYTES)
        weight_map.update(dict.fromkeys(tensors, name))
    (directory / "model.safetensors.index.json").write_bytes(orjson.dumps({"weight_map": weight_map}))
    return directory


def reuse_comparison(cfg, work: Path) -> dict:
    """Seconds of (a) the original generation, (b) the re-judged run reusing its answers, and
    (c) the identity check on a 40 GB (sparse) model directory."""
    from prefgen.executors import generate
    from prefgen.resume.identity import model_identity

    original = replace(cfg, output=str(work / "reuse-original.jsonl"))
    started = time.perf_counter()
    generate(original, ["bench"], show_progress=False)
    generation_s = time.perf_counter() - started
    rejudged = replace(
        cfg, output=str(work / "reuse-rejudged.jsonl"), dedup_rejects="exact", reuse_answers=original.output
    )
    started = time.perf_counter()
    generate(rejudged, ["bench"], show_progress=False)
    rejudged_s = time.perf_counter() - started
    model_dir = sparse_model_dir(cfg.base_model, work / "sparse-model")
    times = []
    for _ in range(5):
        started = time.perf_counter()
        model_identity(str(model_dir))
        times.append(time.perf_counter() - started)
    identity_s = statistics.median(times)
    click.echo(
        f"reuse: original generation {generation_s:.2f}s; re-judged with --reuse-answers {rejudged_s:.2f}s"
        f" ({generation_s / rejudged_s:.1f}x); identity check of 4 x 10 GB shards {identity_s * 1000:.1f} ms"
    )
    return {"generation_s": generation_s, "rejudged_s": rejudged_s, "identity_s": identity_s}
