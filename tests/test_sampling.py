import random

import pytest
import torch
from conftest import SAMPLE

from prefgen.config import GenerateConfig
from prefgen.engines.sampling import choose_tokens, top_p_filter, uniform_noise
from prefgen.flow.plan import plan_units
from prefgen.flow.records import iter_records


def test_noise_is_a_pure_function_of_seed_step_and_token():
    seeds = torch.tensor([1, 2, 3, 2**40 + 5], dtype=torch.int64)
    a = uniform_noise(seeds, step=4, vocab=50)
    b = uniform_noise(seeds[[3, 1]], step=4, vocab=50)
    assert torch.equal(a[[3, 1]], b)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, uniform_noise(seeds, step=5, vocab=50))
    assert float(a.min()) > 0 and float(a.max()) < 1


def test_seeded_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(6000, 1)
    seeds = torch.arange(6000, dtype=torch.int64)
    counts = torch.bincount(choose_tokens(logits, seeds, 0, 1.0, 1.0), minlength=3).float() / 6000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.2]), atol=0.03)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    kept = torch.isfinite(top_p_filter(logits, 0.8))
    assert kept.tolist() == [[False, True, True]]
    assert torch.isfinite(top_p_filter(logits, 0.01)).sum() == 1


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0]])
    assert choose_tokens(logits, torch.tensor([7, 8]), 0, 0.0, 0.9).tolist() == [1, 0]


@pytest.fixture(scope="module")
def engine(tiny_model):
    from prefgen.engines import load_engine

    cfg = GenerateConfig.from_flags(
        base_model=str(tiny_model),
        sft_data=str(SAMPLE),
        output="unused.jsonl",
        num_rejects=2,
        max_new_tokens=12,
        temperature=1.0,
        top_p=0.95,
        device="cpu",
    )
    return load_engine(cfg)


def generate(engine, units) -> list:
    """The answers of one batch, the way the run loop asks for them (start, then answers)."""
    answers, backoffs = engine.answers(units, engine.start(units))
    assert not backoffs
    return answers


def test_unit_text_is_independent_of_batch_size_order_and_neighbours(engine):
    units = list(plan_units(iter_records(SAMPLE, limit=4), num_rejects=2, seed=99))
    batched = [a.text for a in generate(engine, units)]
    alone = [generate(engine, [u])[0].text for u in units]
    shuffled_units = units[:]
    random.Random(3).shuffle(shuffled_units)
    shuffled = dict(
        zip([u.key for u in shuffled_units], [a.text for a in generate(engine, shuffled_units)], strict=False)
    )
    assert batched == alone
    assert [shuffled[u.key] for u in units] == batched
    assert len(set(batched)) == len(batched), "different seeds should give different random text"
