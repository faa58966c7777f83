"""Step 5 of the flow: generate answers for batches of work units, with one of two engines.

The boundary the run loop drives is `base.Engine`; `transformers` (engines/transformers.py) is
the default engine, `vllm` (engines/vllm.py) an optional extra, and what both load through
transformers (tokenizer, model, adapter, merged-adapter cache) is engines/loading.py. Each
engine module imports its heavy libraries lazily, so `prefgen --help` stays instant.
"""

from __future__ import annotations

import importlib

from prefgen.config import GenerateConfig
from prefgen.engines.base import Engine

ENGINES = {"transformers": "prefgen.engines.transformers", "vllm": "prefgen.engines.vllm"}


def load_engine(cfg: GenerateConfig) -> Engine:
    """The engine `cfg.engine` names, loaded (model, tokenizer, adapter)."""
    return importlib.import_module(ENGINES[cfg.engine]).load(cfg)
