"""`prefgen check-invariance`: the same units alone and in a full batch, compared text by text
(the vLLM side, with its prefix cache and invariant mode, is in test_vllm.py)."""

from conftest import run_cli, scripted_engine

import prefgen.engines
from prefgen.cli.invariance import EXIT_DIFFERENT


def args(model, data, **flags):
    options = {"samples": 1, "num_rejects": 3, "batch_size": 6, "max_new_tokens": 6, "device": "cpu", "seed": 5}
    options.update(flags)
    result = ["check-invariance", "--base-model", str(model), "--sft-data", str(data)]
    for name, value in options.items():
        result += ["--" + name.replace("_", "-"), str(value)]
    return result


def test_the_tiny_model_gives_every_unit_the_same_text_alone_and_in_a_full_batch(tiny_model, sample_data, workdir):
    output = run_cli(args(tiny_model, sample_data)).output
    assert "Engine transformers on cpu; full batch: 6 rows" in output
    assert "no prefix cache and no invariant mode" in output
    rows = [line.split() for line in output.splitlines() if line.strip()[:3] in ("0/0", "0/1", "0/2")]
    assert rows == [["0/0", "same"], ["0/1", "same"], ["0/2", "same"]]
    assert "DIFFERS" not in output and "All 3 units identical under every condition" in output


def test_a_text_that_depends_on_the_batch_is_reported_and_exits_4(tiny_model, sample_data, workdir, monkeypatch):
    from prefgen.units import Answer

    engine = scripted_engine(lambda sample, reject: "")

    def generate_tokens(units, rows):  # the batch's size leaks into every answer
        return [[len(units)] for _ in units], 0.001

    engine.generate_tokens = generate_tokens
    engine.answer = lambda row, new, seconds: Answer(f"SELECT {new[0]}", 2, 1, seconds)
    engine.close = lambda: None
    monkeypatch.setattr(prefgen.engines, "load_engine", lambda cfg: engine)
    result = run_cli(args(tiny_model, sample_data, samples=2, num_rejects=2, batch_size=8), expect=EXIT_DIFFERENT)
    assert result.output.count("DIFFERS") == 4
    assert "4 of 4 units differ" in result.output and "none is lost or written twice" in result.output
