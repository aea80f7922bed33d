"""The CLI's contract for bad input: exit 2, exactly one line on stderr, no traceback, nothing written in the
working directory or in the run directory, and no model loaded (the checks come first)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers

from metric_search.cli import main
from metric_search.config import load_config
from metric_search.search import MetricSearch

NO_CUDA = not torch.cuda.is_available()


class ModelLoaded(BaseException):
    """Raised instead of loading weights: a bad input must be refused before that (BaseException so that
    no handler in the code under test can swallow it)."""


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A tiny checkpoint, a text folder, a finished run and a few broken files, shared by every row."""
    from conftest import char_tokenizer, tiny_llama

    root = tmp_path_factory.mktemp("bad-inputs")
    ckpt = root / "tiny"
    tiny_llama().save_pretrained(ckpt)
    char_tokenizer().save_pretrained(ckpt)
    text = root / "text"
    text.mkdir()
    words = "the model prunes weights and keeps what matters in a row".split()
    for split in ("valid", "test"):
        (text / f"{split}.txt").write_text("\n".join(" ".join(words[(i + k) % len(words)] for k in range(12))
                                                     for i in range(300)) + "\n")
    problem = [f"model={json.dumps(str(ckpt))}", f"data={json.dumps('text:' + str(text))}", "nsamples=2",
               "calib_seqlen=32", "fitness_windows=2", "fitness_seqlen=32", "population_size=4", "iterations=2",
               "test_top_k=1", "test_windows=1", "test_seqlen=32", "seed=1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METRIC_SEARCH_CACHE", str(root / "cache"))
        MetricSearch(load_config(None, problem), progress=False).fit(root / "run")
    (root / "dup.toml").write_text("seed = 1\n[gp]\nseed = 2\n")
    (root / "broken.toml").write_text("iterations = \n")
    (root / "a-file").write_text("not a folder\n")
    full = root / "full"
    full.mkdir()
    (full / "something").write_text("x")
    return {"ckpt": str(ckpt), "text": str(text), "run": str(root / "run"), "dup": str(root / "dup.toml"),
            "broken": str(root / "broken.toml"), "file": str(root / "a-file"), "full": str(full),
            "none": str(root / "no-such-run"), "problem": problem}


O = ["--output", "out"]
M = ["--model", "{ckpt}"]
CASES = [
    # prune
    (["prune", *O, "--method", "nope"], "unknown method 'nope'"),
    (["prune", *O, "--method", "wanda", "--metric", "wanda"], "either --method or --metric"),
    (["prune", *O, "--sparsity", "1.5"], "strictly between"),
    (["prune", *O, "--sparsity", "0"], "strictly between"),
    (["prune", *O, "--structure", "3:2"], "0 < N < M"),
    (["prune", *O, "--structure", "2:4", "--sparsity", "0.7"], "contradicts"),
    (["prune", *O, "--structure", "abc"], "structure"),
    (["prune", *O, *M, "--method", "besa", "--structure", "2:4"], "BESA allocates unstructured"),
    (["prune", *O, *M, "--calib-data", "bogus"], "unknown text source 'bogus'"),
    (["prune", *O, *M, "--calib-data", "text:/no/such/corpus"], "text file not found"),
    (["prune", *O, *M, "--calib-data", "c4:/no/such/shard.json.gz"], "C4 shard not found"),
    (["prune", *O, *M, "--calib-preset", "c5"], "unknown calibration preset 'c5'"),
    (["prune", *O, *M, "--magnitude-group", "column"], "invalid choice"),
    (["prune", *O, *M, "--method", "gblm", "--gblm-alpha", "-1"], "gblm: alpha must be ≥ 0"),
    (["prune", *O, "--model", "./no/such/model"], "model not found"),
    (["prune", *O, "--model", "/no/such/model.gguf"], "GGUF file not found"),
    (["prune", *O, "--model", "{text}"], "no config.json"),
    (["prune", *O, "--model", "not a model id"], "model not found"),
    (["prune", *O, *M, "--nsamples", "0"], "--nsamples"),
    (["prune", *O, *M, "--calib-seqlen", "1"], "--calib-seqlen"),
    (["prune", "--output", "{full}", *M], "not an empty directory"),
    (["prune", "--output", "{file}/out", *M], "is a file"),
    (["prune", *O, *M, "--metric", "mul(W, Q)"], "unknown name 'Q'"),
    (["prune", *O, *M, "--metric", "W**2*Q"], "unknown name 'Q'"),
    (["prune", *O, *M, "--metric", "{none}:best"], "no-such-run"),
    (["prune", *O, *M, "--method", "besa", "--score", "mul(W, Q)"], "unknown name 'Q'"),
    (["prune", *O, *M, "--device", "tpu"], "device"),
    (["prune", *O, *M, "--dtype", "float8"], "dtype"),
    (["prune", *O, *M, "--grad-norm", "l3"], "invalid choice"),
    (["prune", *O, "--sparsity", "half"], "invalid float value"),
    (["prune", *M], "--output"),
    (["prune", *O, "--seed", "x"], "invalid int value"),
    (["prune", *O, "--bogus-flag"], "unrecognized arguments"),
    # eval
    (["eval", "./no/such/model"], "model not found"),
    (["eval", "{ckpt}", "--data", "bogus"], "unknown text source"),
    (["eval", "{ckpt}", "--split", "validation"], "did you mean 'valid'"),
    (["eval", "{ckpt}", "--split", "tset"], "did you mean 'test'"),
    (["eval", "{ckpt}", "--seqlen", "1"], "--seqlen"),
    (["eval", "{ckpt}", "--max-windows", "0"], "--max-windows"),
    (["eval", "{ckpt}", "--batch-size", "0"], "--batch-size"),
    (["eval", "{ckpt}", "--data", "text:/no/such/corpus"], "text file not found"),
    (["eval", "{ckpt}", "--dtype", "int8"], "dtype"),
    (["eval"], "required: model"),
    # search
    (["search", 'operators=["softplus"]'], "unknown operator 'softplus'"),
    (["search", 'leaves=["W", "Z"]'], "unknown leaf 'Z'"),
    (["search", 'seed_metrics=["mul(W, Q)"]'], "seed_metrics"),
    (["search", 'seed_metrics=["nope"]'], "seed_metrics"),
    (["search", "model=./no/such/model"], "model not found"),
    (["search", "data=bogus"], "unknown text source"),
    (["search", 'data="text:/no/such/corpus"'], "text file not found"),
    (["search", "itrations=5"], "unknown config key 'itrations'"),
    (["search", "sparsity=1.5"], "strictly between"),
    (["search", "population_size=0"], "population_size must be ≥ 1"),
    (["search", "structure=3:2"], "0 < N < M"),
    (["search", "mode=random"], "mode must be"),
    (["search", "n_jobs=0"], "n_jobs"),
    (["search", "dtype=float8"], "dtype must be one of"),
    (["search", "device=tpu"], "device"),
    (["search", "--config", "missing.toml"], "config file not found"),
    (["search", "--config", "{dup}"], "seed is set twice"),
    (["search", "--config", "{broken}"], "broken.toml"),
    (["search", "noequals"], "not key=value"),
    (["search", "--run-dir", "{run}"], "already holds a run"),
    (["search", "--run-dir", "{file}/run"], "is a file"),
    # resume
    (["resume", "{none}"], "not a run directory"),
    (["resume", "{run}", "sparsity=0.6"], "cannot change sparsity"),
    (["resume", "{run}", "itrations=3"], "unknown config key 'itrations'"),
    (["resume", "{run}", "population_size=0"], "population_size must be ≥ 1"),
    # export
    (["export", "{none}"], "no-such-run"),
    (["export", "{run}", "--index", "99"], "99"),
    (["export", "{run}", "--index", "abc"], "abc"),
    (["export", "{run}", "--format", "docx"], "docx"),
    (["export", "{run}", "--output", "{file}/metrics"], "a-file"),
    # analyze
    (["analyze", "{run}", "--top", "0"], "--top must be ≥ 1"),
    (["analyze", "{none}"], "no-such-run"),
    (["analyze", "{run}", "{run}"], "--compare"),
    (["analyze", "{run}", "--reevaluate", "--reevaluate-top", "0"], "--reevaluate-top"),
    (["analyze", "{run}", "--reevaluate", "--structure", "3:2"], "0 < N < M"),
    (["analyze", "{run}", "--reevaluate", "--split", "validation"], "did you mean 'valid'"),
    (["analyze", "{run}", "--compare", "--top", "-1"], "--top must be ≥ 1"),
    # simplify, ops, top level
    (["simplify", "mul(W"], "position"),
    (["simplify", "W**2*Q"], "unknown name 'Q'"),
    (["simplify", ""], "empty expression"),
    (["simplify", "foo(W)"], "foo"),
    (["ops", "extra"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
]
if NO_CUDA:
    CASES += [(["prune", *O, *M, "--device", "cuda"], "CUDA"), (["eval", "{ckpt}", "--device", "cuda:7"], "CUDA"),
              (["search", "device=cuda"], "CUDA"), (["analyze", "{run}", "--reevaluate", "--device", "cuda"], "CUDA")]


def _exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's errors
        return stop.code


def _listing(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*")} if path.exists() else {}


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_invocation_is_one_line_exit_2_and_writes_nothing(argv, needle, places, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise ModelLoaded("a model was loaded before the bad input was noticed")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    run = Path(places["run"])
    before = _listing(run)
    code = _exit_status([a.format(**places) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert _listing(work) == {}, "files left in the working directory"
    assert _listing(run) == before, "the run directory changed"


def test_table_covers_every_subcommand():
    assert len(CASES) >= 60
    assert {argv[0] for argv, _ in CASES} >= {"prune", "eval", "search", "resume", "export", "analyze", "simplify",
                                              "ops"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bit")
def test_read_only_output_is_one_line(places, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["prune", "--model", places["ckpt"], "--output", str(locked / "out")]) == 2
        assert main(["search", "--run-dir", str(locked / "run"), *places["problem"]]) == 2
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "not writable" in err
    assert list(locked.iterdir()) == []


def test_full_disk_while_saving_is_one_line_and_leaves_no_half_checkpoint(places, tmp_path, monkeypatch, capsys):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full)
    monkeypatch.chdir(tmp_path)
    assert main(["prune", "--model", places["ckpt"], "--method", "magnitude", "--output", "out"]) == 2
    err = capsys.readouterr().err.splitlines()  # progress bars, then the one line
    assert err[-1] == "metric-search prune: error: No space left on device" and "Traceback" not in "".join(err)
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its temporary sibling
