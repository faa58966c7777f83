"""The settings of one generate run, and the fingerprint a resumed run must match."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefgen.errors import ConfigError
from prefgen.paths import journal_of, ledger_beside, part_path

if TYPE_CHECKING:
    from prefgen.units import Verdict

# The choices of every flag that has a fixed set; the CLI offers exactly these.
MAX_REJECTS = 1000  # seeds are seed + sample*1000 + reject: more rejects would collide
PAIR_MODES = ("gold", "onpolicy")
ANSWER_MODES = ("sql", "full")
FALLBACK_MODES = ("none", "gold")
DEFAULT_EQUIVALENCE = "lenient"  # --equivalence: rows compared as sets
EQUIVALENCE_MODES = (DEFAULT_EQUIVALENCE, "multiset", "ordered")
DEDUP_MODES = ("exact", "sql")  # --dedup-rejects: identical text; identical after normalization
EXPORT_FORMATS = ("llamafactory", "sharegpt", "trl", "kto", "rewards")
ENGINE_NAMES = ("transformers", "vllm")  # --engine; in the fingerprint only when not the first
# --executor: today's loop in this process, or one run over a Ray cluster (executors/ray.py). Not in
# the fingerprint, nor are the Ray settings: a run may resume with another executor.
EXECUTORS = ("local", "ray")
RAY_FIELDS = ("ray_address", "workers", "gpus_per_worker", "block_units")
# --evaluator: whose execution accuracy a candidate must satisfy (sql/evaluators.py); `lenient`,
# not offered, is the rule of ledgers made before it (rows as sets, columns in any order)
EVALUATORS = ("spider", "bird", "both")
DEFAULT_EVALUATOR, LENIENT = "both", "lenient"
# --lora (vllm): auto (native LoRA on a GPU where vLLM serves the model's LoRA, merge otherwise),
# native (a LoRARequest per request), merge (the adapter merged into a cached model directory)
LORA_MODES = ("auto", "native", "merge")

# Each candidate's reward (the ledger's units.reward, `export --format rewards`): the execution
# reward of Arctic-Text2SQL-R1 (arXiv 2505.20315): 1 correct, 0.1 executes but wrong, 0 fails.
# An unverifiable candidate, or one without a verdict (no --db-root), has none.
EXECUTION_REWARDS = {"equivalent": 1.0, "wrong_result": 0.1, "exec_error": 0.0, "timeout": 0.0}


def execution_reward(verdict: str | None) -> float | None:
    """The reward of a candidate with this execution verdict (None: unverifiable or unjudged)."""
    return EXECUTION_REWARDS.get(verdict or "")


# --db-variants: perturbed copies of each database an equivalent answer must also match the gold
# on (sql/variants.py); chosen by measurement (docs/benchmarks.md). Databases over
# --db-variant-max-mb are checked on the original only. 0 variants: off, the rule of older ledgers.
DEFAULT_DB_VARIANTS = 3
DEFAULT_DB_VARIANT_MAX_MB = 200.0

# --gold-suspect: what becomes of a sample whose gold looks wrong (suspects.py): keep (flag it and
# write its pairs) or skip (no pair). "" is the rule of ledgers made before it: golds not checked.
GOLD_SUSPECT_MODES = ("keep", "skip")
DEFAULT_GOLD_SUSPECT, DEFAULT_SUSPECT_SHARE = "keep", 0.5

DB_FIELD_HINT = "--db-field names the field holding the database id"  # a record without it
DEFAULT_SEED = 42  # --seed; database variants are drawn from it too

# Execution limits (--time-limit, --max-rows), shared by generate, verify and pair.
DEFAULT_TIME_LIMIT = 5.0
DEFAULT_MAX_ROWS = 100_000


def check_num_rejects(num_rejects: int) -> None:
    """Refuse reject counts whose seeds would collide with the next sample's."""
    if not 1 <= num_rejects < MAX_REJECTS:
        raise ConfigError(
            f"--num-rejects must be between 1 and {MAX_REJECTS - 1}, not {num_rejects}",
            hint=f"seeds are seed + sample_index*{MAX_REJECTS} + reject_index, so more would collide",
        )


def check_judging(evaluator: str, gold_suspect: str = "", suspect_share: float = DEFAULT_SUSPECT_SHARE) -> None:
    """Refuse --evaluator, --gold-suspect and --suspect-share values that cannot work."""
    if evaluator not in (*EVALUATORS, LENIENT, ""):
        raise ConfigError(f"--evaluator must be one of {', '.join(EVALUATORS)}, not {evaluator!r}")
    if gold_suspect not in (*GOLD_SUSPECT_MODES, ""):
        raise ConfigError(f"--gold-suspect must be one of {', '.join(GOLD_SUSPECT_MODES)}, not {gold_suspect!r}")
    if not 0 <= suspect_share < 1:
        raise ConfigError(
            f"--suspect-share must be at least 0 and below 1, not {suspect_share}",
            hint="a gold is suspect when more than this share of the executed answers agree on another result",
        )


def check_pair_modes(answer: str, fallback: str) -> None:
    """Refuse --answer / --fallback values, and the combination that would teach the wrong thing."""
    for name, value, modes in (("answer", answer, ANSWER_MODES), ("fallback", fallback, FALLBACK_MODES)):
        if value not in modes:
            raise ConfigError(f"--{name} must be one of {', '.join(modes)}, not {value!r}")
    if fallback == "gold" and answer == "full":
        raise ConfigError(
            "--fallback gold works with --answer sql only",
            hint="a bare gold query against a reasoned answer would teach the model to stop reasoning",
        )


@dataclass(frozen=True)
class CheckPolicy:
    """The judging settings of --db-root: where the databases are, how verdicts become keep /
    drop, and the execution limits. Every default is here, once.

    `None` is "not given" (the CLI's, and `GenerateConfig.from_flags`'s, for a flag left out) for
    the settings whose value depends on what is resumed or paired: resume/settings.py resolves
    them, in one place, before anything is judged."""

    db_root: str = ""  # "": SQL is not executed
    db_field: str = "db_id"
    equivalence: str = DEFAULT_EQUIVALENCE
    drop_timeout: bool | None = None  # None: kept as rejects with --pairs gold, neither with onpolicy
    drop_unverifiable: bool | None = None
    time_limit: float = DEFAULT_TIME_LIMIT
    max_rows: int = DEFAULT_MAX_ROWS
    evaluator: str | None = DEFAULT_EVALUATOR  # None: not given (LENIENT for a ledger made before evaluators)
    db_variants: int | None = DEFAULT_DB_VARIANTS  # None: not given (0 for a ledger made before variants)
    db_variant_max_mb: float = DEFAULT_DB_VARIANT_MAX_MB
    gold_suspect: str | None = DEFAULT_GOLD_SUSPECT  # None: not given ("", not checked, for a ledger made before)
    suspect_share: float = DEFAULT_SUSPECT_SHARE
    variant_seed: int = DEFAULT_SEED  # generate: the run's --seed (variants are drawn from it)

    def __post_init__(self):
        if self.evaluator == "":  # an empty value (a config file, the Makefile): not given
            object.__setattr__(self, "evaluator", None)
        check_judging(self.evaluator or "", self.gold_suspect or "", self.suspect_share)

    def check(self) -> None:
        """Refuse settings that cannot work, before any work is done."""
        if not Path(self.db_root).is_dir():
            raise ConfigError(
                f"--db-root {self.db_root} is not a directory",
                hint="give the directory holding <db_id>/<db_id>.sqlite (Spider's and BIRD's database/)",
            )
        if self.equivalence not in EQUIVALENCE_MODES:
            raise ConfigError(f"--equivalence must be one of {', '.join(EQUIVALENCE_MODES)}, not {self.equivalence!r}")
        if self.time_limit <= 0 or self.max_rows < 1:
            raise ConfigError("--time-limit must be above 0 and --max-rows at least 1")
        if self.db_variants is not None and self.db_variants < 0 or self.db_variant_max_mb <= 0:
            raise ConfigError("--db-variants must be 0 or more and --db-variant-max-mb above 0")

    def keeps(self, verdict: Verdict) -> bool:
        """Whether a reject with this verdict is worth training on, under this policy."""
        return verdict.kept(self.equivalence, not self.drop_timeout, not self.drop_unverifiable)


CHECK_FIELDS = tuple(f.name for f in dataclasses.fields(CheckPolicy) if f.name != "variant_seed")
# The judging settings whose value, when not given, depends on the run (resume/settings.py).
UNSET_FIELDS = ("evaluator", "db_variants", "gold_suspect", "drop_timeout", "drop_unverifiable")


def looks_local(ref: str) -> bool:
    """True when `ref` names a directory rather than a hub id such as `Qwen/Qwen3-8B`."""
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1


def resolve_model_ref(ref: str) -> str:
    """Absolute path for a local directory, the string itself for a hub id or an empty value."""
    if ref and looks_local(ref):
        return str(Path(ref).expanduser().resolve())
    return ref


@dataclass(frozen=True)
class GenerateConfig:
    """Everything `prefgen generate` was asked to do. The judging settings are `check` (a
    CheckPolicy); `cfg.db_root` and its siblings read through to it. Built from flat flag
    names with `from_flags`."""

    base_model: str
    sft_data: str
    output: str
    adapter_path: str = ""
    ledger: str = ""
    num_rejects: int = 1
    dedup_rejects: str = ""  # "" (off), "exact" or "sql"
    seed: int = DEFAULT_SEED
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    max_samples: int = 0
    batch_size: int | str = 8  # or "auto": the largest that fits, found after loading the model
    max_batch_tokens: int = 0
    lookahead: int = 32
    device: str = "auto"  # auto: CUDA where torch sees it, else the CPU
    system: str = ""
    rank: int = 0
    world_size: int = 1
    overlap: bool | None = None  # commit while the next batch generates; None: on for CUDA only
    max_attempts: int = 0  # attempts per sample to reach num_rejects kept rejects; 0: num_rejects
    check: CheckPolicy = CheckPolicy()  # --db-root and how its verdicts are judged
    exec_workers: int = 0  # processes executing SQL; 0: min(4, cores / 2)
    allow_missing_db: bool = False  # start although --db-root lacks databases the records name
    pairs: str = "gold"  # gold: the gold is chosen; onpolicy: the model's own correct answer
    answer: str = "sql"  # onpolicy: what a side holds: the extracted SQL, or the whole answer
    fallback: str = "none"  # onpolicy: "gold" pairs the gold with a sample that has no correct answer
    engine: str = "transformers"  # or "vllm"
    batch_invariant: bool = False  # vllm: VLLM_BATCH_INVARIANT=1, the same text whatever the batch
    max_model_len: int = 0  # the context a prompt must fit (vllm: and its KV cache); 0: the model's
    gpu_memory_utilization: float = 0.9  # vllm: share of GPU memory for weights and KV cache
    lora: str = "auto"  # vllm: how the adapter is applied, one of LORA_MODES
    reuse_answers: str = ""  # an earlier run (output or ledger) whose answers this one takes (resume/reuse.py)
    executor: str = "local"  # one of EXECUTORS
    ray_address: str = ""  # ray: the cluster to join; "": RAY_ADDRESS, else a Ray of the run's own
    workers: str = ""  # ray: engine workers, N or MIN-MAX; "": 1 up to what the cluster's GPUs hold
    gpus_per_worker: float | None = None  # ray: GPUs each engine worker asks for; None: see executors/ray.py
    block_units: int = 0  # ray: units per block handed to a worker (whole samples); 0: 4 batches

    @classmethod
    def from_flags(cls, **flags) -> "GenerateConfig":
        """The settings from flat flag names (the CLI's, a config file's, `settings()`'s)."""
        judging = {name: flags.pop(name) for name in CHECK_FIELDS if name in flags}
        for name in UNSET_FIELDS:  # left out: decided by the ledger (resume/settings.py)
            judging.setdefault(name, None)
        flags.pop("variant_seed", None)
        return cls(**flags, check=CheckPolicy(**judging))  # its variant_seed: the run's --seed (__post_init__)

    def __getattr__(self, name: str):
        if name in CHECK_FIELDS:  # cfg.db_root, cfg.evaluator, ...: the judging settings
            return getattr(self.check, name)
        raise AttributeError(name)

    def __post_init__(self):
        if isinstance(self.dedup_rejects, bool):  # `dedup-rejects: true` in a config file
            object.__setattr__(self, "dedup_rejects", "exact" if self.dedup_rejects else "")
        if self.check.variant_seed != self.seed:
            object.__setattr__(self, "check", dataclasses.replace(self.check, variant_seed=self.seed))
        check_num_rejects(self.num_rejects)
        self._check_pairs()
        self._check_engine()
        self._check_sampling()
        self._check_sizes()
        self._check_executor()

    def _check_engine(self) -> None:
        if self.engine not in ENGINE_NAMES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINE_NAMES)}, not {self.engine!r}")
        if self.batch_invariant and self.engine != "vllm":
            raise ConfigError("--batch-invariant is a vLLM setting", hint="add --engine vllm, or drop the flag")
        if self.lora not in LORA_MODES:
            raise ConfigError(f"--lora must be one of {', '.join(LORA_MODES)}, not {self.lora!r}")
        if self.lora != "auto" and self.engine != "vllm":
            raise ConfigError("--lora is a vLLM setting", hint="the transformers engine merges the adapter in memory")
        if self.max_model_len < 0 or not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("--max-model-len must be 0 or more and --gpu-memory-utilization in (0, 1]")

    def _check_sampling(self) -> None:
        if self.dedup_rejects and self.dedup_rejects not in DEDUP_MODES:
            raise ConfigError(f"--dedup-rejects must be exact or sql, not {self.dedup_rejects!r}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, not {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be 0 (greedy) or more, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], not {self.top_p}")
        if self.max_attempts and not self.num_rejects <= self.max_attempts < MAX_REJECTS:
            raise ConfigError(
                f"--max-attempts must be between --num-rejects ({self.num_rejects}) and {MAX_REJECTS - 1},"
                f" not {self.max_attempts}",
                hint=f"attempt seeds are seed + sample_index*{MAX_REJECTS} + attempt, so more would collide",
            )

    def _check_sizes(self) -> None:
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"--batch-size must be 'auto' or at least 1, not {self.batch_size!r}")
        if self.max_batch_tokens < 0:
            raise ConfigError(f"--max-batch-tokens must be 0 (no bound) or more, not {self.max_batch_tokens}")
        if self.lookahead < 1:
            raise ConfigError(f"--lookahead must be at least 1, not {self.lookahead}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"--rank must be in [0, --world-size), not {self.rank} of {self.world_size}")
        if self.max_samples < 0:
            raise ConfigError(f"--max-samples must be 0 (all) or more, not {self.max_samples}")
        if self.exec_workers < 0:
            raise ConfigError(f"--exec-workers must be 0 (automatic) or more, not {self.exec_workers}")

    def _check_executor(self) -> None:
        """Refuse an unknown executor, local flags with Ray, and Ray flags without it."""
        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, not {self.executor!r}")
        if self.executor == "local":
            given = [name for name in RAY_FIELDS if getattr(self, name) not in ("", 0, None)]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise ConfigError(f"{flag} is a Ray setting", hint="add --executor ray, or drop the flag")
            return
        self._check_ray()

    def _check_ray(self) -> None:
        """Refuse, with --executor ray, the local loop's flags and malformed Ray settings."""
        if self.world_size != 1 or self.rank != 0:
            raise ConfigError(
                "--rank and --world-size split a run into static ranks; --executor ray hands out blocks itself",
                hint="drop --rank/--world-size (and torchrun, whose RANK/WORLD_SIZE set them)",
            )
        if self.overlap is not None or self.exec_workers:
            flag = "--overlap/--no-overlap" if self.overlap is not None else "--exec-workers"
            raise ConfigError(
                f"{flag} is a setting of the local loop",
                hint="drop it with --executor ray (its judging runs as Ray tasks, one CPU each)",
            )
        if self.device.startswith("cuda:"):
            raise ConfigError(
                f"--device {self.device}: with --executor ray, Ray gives each worker its GPUs",
                hint="pass --device cuda (or cpu) and --gpus-per-worker",
            )
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker must be 0 or more, not {self.gpus_per_worker}")
        if self.block_units < 0:
            raise ConfigError(f"--block-units must be 0 (automatic) or more, not {self.block_units}")
        _ = self.worker_range  # refuses a malformed --workers

    @property
    def worker_range(self) -> tuple[int, int]:
        """--workers as (MIN, MAX); (1, 0) when not given: MAX is what the cluster holds."""
        text = str(self.workers).strip()
        if not text:
            return 1, 0
        low, _, high = text.partition("-")
        try:
            low, high = int(low), int(high or low)
        except ValueError:
            low = high = 0
        if not 1 <= low <= high:
            raise ConfigError(f"--workers must be N or MIN-MAX with 1 <= MIN <= MAX, not {text!r}")
        return low, high

    @property
    def block_size(self) -> int:
        """Units per block (--block-units; 0: four batches, or 256 with --batch-size auto)."""
        if self.block_units:
            return self.block_units
        return 4 * self.batch_size if isinstance(self.batch_size, int) else 256

    def _check_pairs(self) -> None:
        if self.pairs not in PAIR_MODES:
            raise ConfigError(f"--pairs must be one of {', '.join(PAIR_MODES)}, not {self.pairs!r}")
        check_pair_modes(self.answer, self.fallback)
        if self.pairs == "gold":
            if self.answer != "sql" or self.fallback != "none":
                raise ConfigError(
                    "--answer full and --fallback gold need --pairs onpolicy",
                    hint="with --pairs gold the gold query is always the chosen side",
                )
            return
        if not self.db_root:
            raise ConfigError(
                "--pairs onpolicy needs --db-root: answers are judged by executing them",
                hint="give the directory holding <db_id>/<db_id>.sqlite (Spider's and BIRD's database/)",
            )

    @property
    def onpolicy(self) -> bool:
        return self.pairs == "onpolicy"

    @property
    def attempts(self) -> int:
        """The most units one sample may use (--max-attempts, by default --num-rejects)."""
        return self.max_attempts or self.num_rejects

    def check_policy(self) -> CheckPolicy | None:
        """The execution-verdict policy of --db-root, or None without it."""
        return self.check if self.db_root else None

    @property
    def checks_gold(self) -> bool:
        """Whether samples' golds are checked (suspects.py): with --db-root, unless the ledger was made before."""
        return bool(self.db_root) and self.gold_suspect != ""

    @property
    def target_path(self) -> Path:
        """The output this process writes: --output itself, or its rank's part under torchrun."""
        return part_path(Path(self.output), self.rank, self.world_size)

    @property
    def output_path(self) -> Path:
        """This process's JSONL: the target, or for a .json output the JSON Lines journal beside
        it (the array is written from it when the run is complete)."""
        return journal_of(self.target_path)

    @property
    def ledger_path(self) -> Path:
        if self.ledger:
            return part_path(Path(self.ledger), self.rank, self.world_size)
        return ledger_beside(self.target_path)

    def settings(self) -> dict:
        """Every setting by its flag name, as recorded in the ledger's runs table."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "check"}
        values.update((name, getattr(self.check, name)) for name in CHECK_FIELDS)
        return values


def read_config_file(path: str, known: set[str]) -> dict:
    """Settings from a YAML file whose keys are flag names (dashes or underscores)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of flag names to values")
    settings = {}
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known:
            raise ConfigError(
                f"{path}: unknown key {key!r}",
                hint="keys are generate's flag names, such as base-model or num-rejects",
            )
        settings[name] = "" if value is None else value
    return settings
