"""The GP search on the tiny random Llama: run files, caches, failures, resume after kill -9, SIGTERM and a torn
last line, one process per run, configs."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metric_search.config import ConfigError, load_config
from metric_search.search import MetricSearch
from metric_search.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def problem(tiny_checkpoint, text_dir):
    return [f"model={json.dumps(str(tiny_checkpoint))}", f"data={json.dumps('text:' + str(text_dir))}",
            "nsamples=4", "calib_seqlen=32", "fitness_windows=2", "fitness_seqlen=32", "population_size=8",
            "iterations=10", "test_top_k=2", "test_windows=2", "test_seqlen=32", "seed=3"]


def run_files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if not p.name.startswith(".")}


def test_small_search_writes_every_run_file(problem, tmp_path):
    config = load_config(None, problem + ["seed_metrics=[\"wanda\", \"magnitude\"]"])
    search = MetricSearch(config, progress=False).fit(tmp_path / "run")
    assert run_files(tmp_path / "run") >= {"config.json", "evaluations.jsonl", "hall_of_fame.csv", "logbook.csv",
                                           "checkpoint.json", "final.json"}
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["seed"] == 3 and "torch" in saved["versions"]
    assert search.best_["chosen"] == "*" and float(search.best_["fitness"]) > 1
    assert search.hall_of_fame_[0]["test_perplexity"] != ""
    fitness = [float(r["fitness"]) for r in search.hall_of_fame_]
    assert fitness == sorted(fitness)
    counts = json.loads((tmp_path / "run" / "checkpoint.json").read_text())["counts"]
    assert counts["requested"] == 8 + 10
    assert counts["requested"] == counts["computed"] + counts["key_hits"] + counts["mask_hits"]
    records = search.evaluations_
    assert len(records) == counts["computed"] + counts["mask_hits"]
    assert len({r["rank_key"] for r in records}) == len(records)  # no candidate paid for twice
    reloaded = MetricSearch.from_run(tmp_path / "run")
    assert reloaded.hall_of_fame_ == search.hall_of_fame_
    assert "*" in search.table()


def test_equivalent_trees_hit_the_caches(problem, tmp_path):
    seeds = ["mul(abs(W), X)", "mul(X, abs(W))", "sqrt(mul(abs(W), X))", "mul(abs(W), mul(X, X))",
             "mul(rowrel(abs(W)), X)"]
    config = load_config(None, problem + [f"seed_metrics={json.dumps(seeds)}", "iterations=0"])
    MetricSearch(config, progress=False).fit(tmp_path / "run")
    counts = json.loads((tmp_path / "run" / "checkpoint.json").read_text())["counts"]
    # the first three share a rank key (only one enters the population); rowrel(|W|)·X is |W|·X scaled per
    # row, which its rank key does not see (it differs from X*Abs(W)) but the mask cache does
    assert counts["mask_hits"] >= 1
    records = RunStore.open(tmp_path / "run").evaluations()
    wanda = [r for r in records if r["expression"] in ("mul(abs(W), X)", "mul(X, abs(W))")]
    assert len(wanda) == 1
    hit = next(r for r in records if r["cached"] == "mask")  # same pruned model: same per-window NLLs (racing pairs)
    original = next(r for r in records if r["mask_hash"] == hit["mask_hash"] and not r["cached"])
    assert hit["window_nll"] == original["window_nll"]
    assert hit["window_nll"] and hit["fidelity"] == len(hit["window_nll"])


def test_failing_candidate_is_recorded_and_run_goes_on(problem, tmp_path):
    seeds = ["sub(W, W)", "mul(abs(W), X)"]
    config = load_config(None, problem + [f"seed_metrics={json.dumps(seeds)}", "iterations=3"])
    MetricSearch(config, progress=False).fit(tmp_path / "run")
    records = RunStore.open(tmp_path / "run").evaluations()
    bad = [r for r in records if r["status"] != "ok"]
    assert bad and all(r["fitness"] is None and r["reason"] for r in bad)


def test_generational_mode(problem, tmp_path):
    config = load_config(None, problem + ["mode=generational", "iterations=2", "offspring=6"])
    search = MetricSearch(config, progress=False).fit(tmp_path / "run")
    assert [int(r["iteration"]) for r in search.logbook_] == [0, 1, 2]


def _cli(*args, **kwargs):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "metric_search", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.parametrize("extra,stop,torn", [
    ([], signal.SIGKILL, True),
    (["racing=true", "fitness_windows=4", "proxies=true"], signal.SIGKILL, False),
    ([], signal.SIGTERM, False),
], ids=["kill-9, torn last line, second process", "kill-9, racing", "SIGTERM"])
def test_stopped_run_resumes_to_the_uninterrupted_result(problem, tmp_path, extra, stop, torn):
    overrides = problem + ["iterations=14"] + extra
    reference = _cli("search", "--run-dir", str(tmp_path / "ref"), *overrides)
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    victim = _cli("search", "--run-dir", str(tmp_path / "run"), *overrides)
    evaluations = tmp_path / "run" / "evaluations.jsonl"
    target = random.Random(7).randint(6, 14)  # stop after a random number of finished evaluations
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if evaluations.exists() and evaluations.read_text().count("\n") >= target:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be stopped"
    if torn:  # a second process on the same run is refused while the first holds it (paused meanwhile)
        victim.send_signal(signal.SIGSTOP)
        second = _cli("resume", str(tmp_path / "run"))
        assert second.wait(timeout=120) == 2
        assert "in use by another process" in second.stderr.read().decode()
    victim.send_signal(stop)
    assert victim.wait(timeout=120) == (143 if stop == signal.SIGTERM else -signal.SIGKILL)
    if stop == signal.SIGTERM:
        said = victim.stderr.read().decode()
        assert "interrupted; continue with: metric-search resume" in said and "Traceback" not in said, said
    finished = RunStore.open(tmp_path / "run").evaluations()
    if torn:  # what a kill in the middle of a write leaves
        with open(evaluations, "a") as f:
            f.write('{"rank_key": "mul(W, X)", "fitness": 12.')
    resumed = _cli("resume", str(tmp_path / "run"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    if torn:
        assert "dropped the torn last line" in resumed.stderr.read().decode()
    after = RunStore.open(tmp_path / "run").evaluations()
    keys = [r["rank_key"] for r in after]
    assert len(keys) == len(set(keys))  # no finished evaluation repeated
    assert after[: len(finished)] == finished
    hof = lambda d: [(r["expression"], r["fitness"]) for r in RunStore.open(d).read_table("hall_of_fame.csv")]
    assert hof(tmp_path / "run") == hof(tmp_path / "ref")


def test_resume_extends_a_finished_run(problem, tmp_path):
    config = load_config(None, problem + ["iterations=3"])
    MetricSearch(config, progress=False).fit(tmp_path / "run")
    search = MetricSearch.resume(tmp_path / "run", ["iterations=6"], progress=False)
    assert int(search.logbook_[-1]["iteration"]) == 6
    with pytest.raises(ConfigError, match="cannot change"):
        MetricSearch.resume(tmp_path / "run", ["sparsity=0.6"], progress=False)


@pytest.mark.parametrize("override,needle", [
    ("populaton_size=5", "unknown config key"), ("iterations=ten", "must be int"),
    ("sparsity=1.5", "strictly between"), ("structure=3:2", "0 < N < M"), ("mode=random", "mode must be"),
])
def test_bad_configs(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_cli_bad_config_and_existing_run(problem, tmp_path, capsys):
    from metric_search.cli import main

    assert main(["search", "--config", str(tmp_path / "missing.toml")]) == 2
    assert main(["search", "--run-dir", str(tmp_path / "r"), "iterations=-1"]) == 2
    assert main(["resume", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.count("\n") == 3
    assert not (tmp_path / "r").exists()


def test_dask_local_cluster_with_two_workers(problem, tmp_path):
    distributed = pytest.importorskip("distributed")
    from joblib import parallel_config

    config = load_config(None, problem + ["n_jobs=2", "iterations=4"])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster), parallel_config(backend="dask"):
        search = MetricSearch(config, progress=False).fit(tmp_path / "run")
    workers = {r["worker"] for r in search.evaluations_}
    # both Dask workers evaluated candidates (a batch of a single candidate runs in process, by design)
    assert len(workers - {os.getpid()}) == 2 and len(search.evaluations_) >= 8
    assert int(search.logbook_[-1]["iteration"]) == 4


def test_paired_difference_of_window_nlls():
    import torch

    from metric_search.final import paired_difference

    reference = torch.tensor([3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    mean, se = paired_difference(reference + torch.tensor([0.1, 0.3, 0.1, 0.3], dtype=torch.float64), reference)
    assert mean == pytest.approx(0.2)
    assert se == pytest.approx(torch.tensor([0.1, 0.3, 0.1, 0.3]).std().item() / 2)  # window difficulty cancels


def test_sigterm_during_the_final_test_evaluation_resumes_to_the_same_result(problem, tmp_path, monkeypatch, capsys):
    from metric_search import search as search_module
    from metric_search.cli import main

    MetricSearch(load_config(None, problem), progress=False).fit(tmp_path / "ref")
    measure = search_module.test_perplexities

    def stopped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return measure(*args, **kwargs)

    monkeypatch.setattr(search_module, "test_perplexities", stopped)
    assert main(["search", "--run-dir", str(tmp_path / "run"), *problem]) == 143
    assert "interrupted; continue with: metric-search resume" in capsys.readouterr().err
    monkeypatch.setattr(search_module, "test_perplexities", measure)
    assert main(["resume", str(tmp_path / "run")]) == 0
    table = lambda d: RunStore.open(d).read_table("hall_of_fame.csv")
    assert table(tmp_path / "run") == table(tmp_path / "ref")
    assert any(row["test_perplexity"] for row in table(tmp_path / "run"))


def test_resume_of_a_run_saved_before_newer_keys_existed(problem, tmp_path):
    MetricSearch(load_config(None, problem + ["iterations=2"]), progress=False).fit(tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    for key in ("device", "dtype", "mask_fingerprint", "race_chunk"):
        del saved[key]
    path.write_text(json.dumps(saved))
    search = MetricSearch.resume(tmp_path / "run", ["iterations=3"], progress=False)
    assert int(search.logbook_[-1]["iteration"]) == 3
    assert json.loads(path.read_text())["mask_fingerprint"] == "host"  # what such a run was made with
