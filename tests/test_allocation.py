import json

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from evaluators import Calibration, MaskError, Wanda, compute_statistics, parse_structure, prunable_linears
from evaluators.allocation import (Allocation, allocate, check_allocation, layer_sparsities, outlier_ratios,
                                   owl_allocation, owl_sparsities)
from evaluators.models import layout


def calibration(seed=0):
    windows = torch.randint(3, 100, (4, 32), generator=torch.Generator().manual_seed(seed))
    return Calibration(windows, {"source": "random", "seed": seed}, use_cache=False)


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_owl_sparsities_keep_the_mean_and_spread_exactly(target):
    ratios, sizes = [0.010, 0.030, 0.020, 0.015, 0.050, 0.012], [10, 10, 10, 10, 10, 10]
    s = np.array(owl_sparsities(ratios, sizes, target, lam=0.08))
    assert s.mean() == pytest.approx(target, abs=1e-12)
    assert s.max() - s.min() == pytest.approx(0.16, abs=1e-12)  # 2λ between the extremes
    assert np.argmin(s) == np.argmax(ratios) and np.argmax(s) == np.argmin(ratios)  # more outliers, less pruned
    assert ((s >= target - 0.16) & (s <= target + 0.16)).all()


def test_owl_mean_is_weighted_by_block_size():
    s = np.array(owl_sparsities([0.0, 1.0], [3, 1], 0.5, lam=0.1))
    assert np.average(s, weights=[3, 1]) == pytest.approx(0.5, abs=1e-12)
    assert s[0] - s[1] == pytest.approx(0.2)


def test_owl_equal_ratios_are_uniform_and_bounds_are_checked():
    assert owl_sparsities([0.02, 0.02], [1, 1], 0.5) == (0.5, 0.5)
    with pytest.raises(MaskError, match="outside"):
        owl_sparsities([0.0, 1.0], [1, 1], 0.95, lam=0.2)


def test_outlier_ratio_by_hand(tiny_model):
    cal = calibration()
    stats, _ = compute_statistics(tiny_model, cal.windows, cal.spec, ("X",), use_cache=False, progress=False)
    parts = layout(tiny_model)
    scores = torch.cat([(linear.weight.abs() * stats[parts.name(0, n)]["X"]).flatten()
                        for n, linear in parts.block_linears[0].items()])
    expected = float((scores > 2.0 * scores.double().mean()).sum()) / scores.numel()
    assert outlier_ratios(tiny_model, stats, m=2.0)[0] == pytest.approx(expected)
    allocation = owl_allocation(tiny_model, stats, 0.5, m=2.0, lam=0.05)
    assert sorted(allocation.blocks) == pytest.approx([0.45, 0.55])  # two blocks: target ± λ
    assert allocation.describe()["method"] == "owl"


def test_owl_prunes_each_block_to_its_share_and_the_model_to_the_target():
    model = tiny_llama(layers=3)
    cal = calibration()
    allocation = allocate(model, cal, 0.5, parse_structure(None), "owl", progress=False)
    assert isinstance(allocation, Allocation) and np.mean(allocation.blocks) == pytest.approx(0.5)
    report = Wanda().prune(model, cal, allocation, progress=False)
    per_layer = layer_sparsities(model, allocation)
    for name, linear in prunable_linears(model).items():
        rows, width = linear.weight.shape
        assert int((linear.weight == 0).sum()) == rows * int(width * per_layer[name])
    assert report.sparsity == 0.5 and report.allocation["blocks"] == [round(s, 6) for s in allocation.blocks]
    assert report.overall_sparsity == pytest.approx(0.5, abs=0.02)  # floor(in·s) per row on 32/64-wide rows
    assert len(set(report.layer_sparsity.values())) > 1


def test_owl_composes_with_sequential_and_blockwise_pruning():
    from evaluators import SparseGPT

    for pruner, sequential in ((Wanda(), True), (SparseGPT(), True)):
        model = tiny_llama(layers=3)
        allocation = allocate(model, calibration(), 0.5, parse_structure(None), "owl", progress=False)
        report = pruner.prune(model, calibration(), allocation, sequential=sequential, progress=False)
        blocks = [np.mean([report.layer_sparsity[layout(model).name(i, n)] for n in layout(model).block_linears[i]])
                  for i in range(3)]
        assert np.argsort(blocks).tolist() == np.argsort(allocation.blocks).tolist()


def test_uniform_is_the_target_and_bad_allocations_are_refused(tiny_model):
    assert allocate(tiny_model, None, 0.5, parse_structure(None), "uniform") == 0.5
    with pytest.raises(MaskError, match="fixes N/M"):
        check_allocation("owl", parse_structure("2:4"))
    with pytest.raises(MaskError, match="unknown allocation"):
        check_allocation("besa", parse_structure(None))


def test_prune_cli_with_owl(tiny_checkpoint, text_dir, tmp_path):
    from metric_search.cli import main

    out = tmp_path / "owl"
    assert main(["prune", "--model", str(tiny_checkpoint), "--output", str(out), "--calib-data", f"text:{text_dir}",
                 "--nsamples", "4", "--calib-seqlen", "32", "--method", "magnitude", "--allocation", "owl"]) == 0
    recipe = json.loads((out / "pruning.json").read_text())
    assert recipe["allocation"]["method"] == "owl" and len(recipe["allocation"]["blocks"]) == 2
    assert recipe["overall_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_search_with_owl_allocation(tiny_checkpoint, text_dir, tmp_path):
    from metric_search.config import load_config
    from metric_search.search import MetricSearch

    problem = [f"model={json.dumps(str(tiny_checkpoint))}", f"data={json.dumps('text:' + str(text_dir))}",
               "nsamples=4", "calib_seqlen=32", "fitness_windows=2", "fitness_seqlen=32", "population_size=4",
               "iterations=3", "test_top_k=1", "test_windows=1", "test_seqlen=32", "seed=3", 'allocation="owl"',
               'seed_metrics=["wanda"]']
    search = MetricSearch(load_config(None, problem), progress=False).fit(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["allocation"] == "owl" and float(search.hall_of_fame_[0]["fitness"]) > 1
    from metric_search.worker import evaluator_for, problem as problem_of

    evaluator = evaluator_for(problem_of(search.config.to_dict()))
    assert len(set(evaluator.sparsity_of.values())) == 2  # two blocks, two sparsities
