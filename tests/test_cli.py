import json
import subprocess
import sys

import pytest
import torch

from evaluators import prunable_linears
from metric_search.cli import main


def prune_args(checkpoint, text_dir, out, *extra):
    return ["prune", "--model", str(checkpoint), "--output", str(out), "--calib-data", f"text:{text_dir}",
            "--nsamples", "4", "--calib-seqlen", "32", *extra]


@pytest.mark.parametrize("extra", [["--method", "wanda"], ["--method", "gblm", "--grad-norm", "l1"],
                                   ["--method", "pruner-zero", "--structure", "2:4", "--sequential"],
                                   ["--method", "magnitude", "--sparsity", "0.3"]])
def test_prune_saves_reloadable_checkpoint(tiny_checkpoint, text_dir, tmp_path, extra, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    assert main(prune_args(tiny_checkpoint, text_dir, out, *extra)) == 0
    assert "achieved sparsity" in capsys.readouterr().out
    recipe = json.loads((out / "pruning.json").read_text())
    assert recipe["method"] == extra[1] and "torch" in recipe["versions"]
    assert recipe["overall_sparsity"] == pytest.approx(recipe["sparsity"], abs=0.03)  # floor(in·s) per row
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for name, linear in prunable_linears(reloaded).items():
        assert (linear.weight == 0).float().mean().item() == pytest.approx(recipe["sparsity"], abs=0.03)
        assert recipe["layer_sparsity"][name] == pytest.approx((linear.weight == 0).float().mean().item())
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()


def test_eval_prints_protocol(tiny_checkpoint, text_dir, capsys):
    assert main(["eval", str(tiny_checkpoint), "--data", f"text:{text_dir}", "--seqlen", "64",
                 "--max-windows", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"]["n_windows"] == 2 and result["protocol"]["seqlen"] == 64
    assert result["perplexity"] > 1


@pytest.mark.parametrize("extra,needle", [
    (["--sparsity", "0"], "strictly between"), (["--sparsity", "1"], "strictly between"),
    (["--sparsity", "-0.5"], "strictly between"), (["--structure", "3:2"], "0 < N < M"),
    (["--structure", "a:b"], "malformed"), (["--method", "nope"], "unknown method"),
    (["--structure", "2:4", "--sparsity", "0.7"], "contradicts"),
])
def test_bad_input_one_line_exit_2_no_output(tiny_checkpoint, text_dir, tmp_path, capsys, extra, needle):
    out = tmp_path / "never"
    assert main(prune_args(tiny_checkpoint, text_dir, out, *extra)) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_model_and_data(tmp_path, text_dir, capsys):
    assert main(prune_args(tmp_path / "nomodel", text_dir, tmp_path / "o")) == 2
    assert main(["eval", str(tmp_path / "nomodel")]) == 2
    assert capsys.readouterr().err.count("\n") == 2
    assert not (tmp_path / "o").exists()


def test_existing_output_is_refused(tiny_checkpoint, text_dir, tmp_path, capsys):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(prune_args(tiny_checkpoint, text_dir, out)) == 2
    assert (out / "keep.txt").read_text() == "mine"


def test_console_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metric_search", "prune", "--sparsity", "2",
                           "--output", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("metric-search prune: error:")


def test_sigterm_while_saving_leaves_no_checkpoint(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import os
    import signal

    import transformers

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained",
                        lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    out = tmp_path / "work"
    out.mkdir()
    previous = signal.getsignal(signal.SIGTERM)
    assert main(["prune", "--model", str(tiny_checkpoint), "--method", "magnitude",
                 "--output", str(out / "pruned")]) == 143
    assert capsys.readouterr().err.splitlines()[-1] == "metric-search prune: interrupted"
    assert list(out.iterdir()) == []  # neither the checkpoint nor its temporary sibling
    assert signal.getsignal(signal.SIGTERM) == previous  # the CLI put the previous handler back
