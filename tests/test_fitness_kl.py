"""The KL fitness: mean token KL divergence of the pruned model's next-token distribution from the dense one's."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from evaluators import Wanda, compute_statistics, parse_structure, prunable_linears
from evaluators.fitness import FitnessEvaluator, Race
from evaluators.perplexity import dense_log_probs, window_kls


@pytest.fixture
def setting(tiny_model):
    gen = torch.Generator().manual_seed(5)
    cal = torch.randint(3, 104, (4, 16), generator=gen)
    stats, _ = compute_statistics(tiny_model, cal, {"source": "random"}, ("X", "G"), progress=False)
    windows = torch.randint(3, 104, (4, 16), generator=gen)
    return tiny_model, stats, windows


def test_kl_is_zero_for_the_dense_model_and_positive_after_pruning(setting):
    model, stats, windows = setting
    targets = dense_log_probs(model, windows, batch_size=3)
    assert targets.dtype == torch.float16 and targets.shape == (4, 15, 104)
    assert window_kls(model, windows, targets, batch_size=3).abs().max() < 1e-4  # float16 targets
    dense = {n: l.weight.clone() for n, l in prunable_linears(model).items()}
    for name, linear in prunable_linears(model).items():
        linear.weight.data[:, ::2] = 0
    kl = window_kls(model, windows, targets, batch_size=3)
    log_p = targets.float()
    log_q = F.log_softmax(model(input_ids=windows).logits[:, :-1].float(), -1)
    by_hand = (log_p.exp() * (log_p - log_q)).sum(-1).mean(1).double()
    assert (kl > 1e-4).all() and torch.allclose(kl, by_hand, rtol=1e-5)
    for name, linear in prunable_linears(model).items():
        linear.weight.data.copy_(dense[name])


def test_kl_evaluator_ranks_raced_and_restores(setting):
    model, stats, windows = setting
    evaluator = FitnessEvaluator(model, stats, windows, 0.5, parse_structure(None), batch_size=2, loss="kl")
    wanda = evaluator.evaluate(lambda W, X, G: W.abs() * X)
    assert wanda.status == "ok" and len(wanda.window_nll) == 4
    assert wanda.fitness == pytest.approx(math.exp(sum(wanda.window_nll) / 4)) and wanda.fitness > 1
    worst = evaluator.evaluate(lambda W, X, G: -W.abs() * X, race=Race(wanda.window_nll, min_windows=2, z=0.0))
    assert worst.status == "raced" and len(worst.window_nll) == 2  # per-window KL values race like NLLs
    nll, _ = evaluator.perplexity_with(evaluator.masks(lambda W, X, G: W.abs() * X), loss="nll")
    plain = FitnessEvaluator(model, stats, windows, 0.5, parse_structure(None), batch_size=2)
    assert torch.allclose(nll, torch.tensor(plain.evaluate(lambda W, X, G: W.abs() * X).window_nll, dtype=torch.float64))
    with pytest.raises(ValueError, match="loss"):
        FitnessEvaluator(model, stats, windows, 0.5, parse_structure(None), loss="mse")


def test_search_with_kl_fitness(tiny_checkpoint, text_dir, tmp_path):
    from metric_search.config import ConfigError, load_config
    from metric_search.search import MetricSearch

    problem = [f"model={json.dumps(str(tiny_checkpoint))}", f"data={json.dumps('text:' + str(text_dir))}",
               "nsamples=4", "calib_seqlen=32", "fitness_windows=3", "fitness_seqlen=32", "population_size=4",
               "iterations=4", "test_top_k=1", "test_windows=2", "test_seqlen=32", "seed=3", 'fitness="kl"',
               'seed_metrics=["wanda", "magnitude"]', "racing=true"]
    search = MetricSearch(load_config(None, problem), progress=False).fit(tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()]
    fitness = [r["fitness"] for r in rows if r["status"] == "ok"]
    assert fitness and all(1.0 < f < 20.0 for f in fitness)  # exp(mean KL), not perplexity (~100 here)
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert search.hall_of_fame_ and all(v > 20 for v in final["test_perplexity"].values())  # reported as NLL
    with pytest.raises(ConfigError, match="fitness must be one of"):
        load_config(None, ['fitness="mse"'])
