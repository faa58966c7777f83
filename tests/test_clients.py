"""The trainers users run load prefgen's exports: LLaMA-Factory trains one DPO step on them,
TRL's KTOTrainer one KTO step on a kto export.

LLaMA-Factory pins an older transformers than prefgen, so it lives in a virtual environment
of its own that `make check-clients` builds and names in PREFGEN_CLIENTS_VENV; without it
those tests are skipped. TRL installs beside prefgen (the test extra): its KTO step runs in
prefgen's own environment, with `make check-clients` (its DPO step: test_export.py).
"""

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import DB_ROOT, ROOT, generate_args, read_jsonl, run_cli

CLIENTS_VENV = os.environ.get("PREFGEN_CLIENTS_VENV", "")
CLIENTS_BIN = Path(CLIENTS_VENV).resolve() / "bin" if CLIENTS_VENV else None  # before tests chdir
pytestmark = pytest.mark.clients
needs_clients_venv = pytest.mark.skipif(
    not CLIENTS_VENV, reason="needs `make check-clients` (LLaMA-Factory's own venv)"
)

TRAIN_YAML = """\
model_name_or_path: {model}
stage: dpo
do_train: true
finetuning_type: lora
lora_target: all
pref_beta: 0.1
pref_loss: sigmoid
dataset: {name}
dataset_dir: {data}
template: qwen
cutoff_len: 4096
overwrite_cache: true
preprocessing_num_workers: 1
output_dir: {out}
logging_steps: 1
save_strategy: "no"
per_device_train_batch_size: 4
max_steps: 1
learning_rate: 1.0e-4
report_to: none
bf16: false
"""


def onpolicy_pairs(workdir):
    """On-policy pairs of 8 records: the scripted model answers right and wrong, reasoning included."""
    from conftest import FAILS, REASONED, RIGHT, RIGHT_TOO, WRONG, scripted

    answers = [REASONED.format(sql=sql) for sql in (RIGHT, WRONG, RIGHT_TOO, FAILS)]
    scripted(workdir, answers, records=8, num_rejects=4, answer="full")
    return workdir / "pairs.jsonl"


@needs_clients_venv
@pytest.mark.parametrize(
    "fmt, pairs_mode", [("llamafactory", "gold"), ("sharegpt", "gold"), ("llamafactory", "onpolicy")]
)
def test_llamafactory_trains_one_dpo_step_on_every_exported_pair(workdir, tiny_model, sample_data, fmt, pairs_mode):
    pairs = workdir / "pairs.jsonl"
    if pairs_mode == "onpolicy":
        onpolicy_pairs(workdir)
        assert {line["chosen_source"] for line in read_jsonl(pairs)} == {"model"}
    else:
        run_cli(generate_args(tiny_model, sample_data, pairs, num_rejects=2, max_samples=8, max_new_tokens=16))
    exported = workdir / "data"
    run_cli(["export", str(pairs), "--format", fmt, "--to", str(exported), "--name", "prefgen_pairs"])
    count = len(read_jsonl(exported / "prefgen_pairs.jsonl"))
    assert count == len(read_jsonl(pairs)) > 0
    config = workdir / "dpo.yaml"
    config.write_text(TRAIN_YAML.format(model=tiny_model, name="prefgen_pairs", data=exported, out=workdir / "out"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "clients"), "HF_HUB_OFFLINE": "1"}
    cli = CLIENTS_BIN / "llamafactory-cli"
    done = subprocess.run([str(cli), "train", str(config)], cwd=workdir, env=env, capture_output=True, text=True)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    used = re.search(r"Num examples = ([\d,]+)", log)
    assert used and int(used.group(1).replace(",", "")) == count, log[-4000:]
    assert re.search(r"train_loss\s+=\s+[\d.]+", log)


def test_trl_trains_one_kto_step_on_a_kto_export(workdir, tiny_model, sample_data):
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.data_utils import is_conversational

    pairs = workdir / "pairs.jsonl"
    run_cli(generate_args(tiny_model, sample_data, pairs, num_rejects=2, max_samples=4, db_root=str(DB_ROOT)))
    run_cli(["export", str(pairs), "--format", "kto", "--to", str(workdir / "kto")])
    dataset = datasets.load_dataset("json", data_files=str(workdir / "kto" / "pairs.jsonl"), split="train")
    labels = dataset["label"]
    assert is_conversational(dataset[0]) and True in labels and False in labels
    assert labels.count(True) == len({line["sample_index"] for line in read_jsonl(pairs)})  # each gold once
    config = trl.KTOConfig(
        output_dir=str(workdir / "kto-out"),
        max_steps=1,
        per_device_train_batch_size=4,  # KTO's KL term pairs each prompt with another row's completion
        report_to=[],
        max_length=4096,
        use_cpu=True,
        save_strategy="no",
    )
    trainer = trl.KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_model),
    )
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0
