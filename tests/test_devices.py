"""Devices and dtypes: 16-bit models, the mask fingerprint, the evaluator without a dense copy, CUDA checks,
and every command on tiny random models of seven architectures (no downloads, no GPU needed)."""
import json

import pytest
import torch

from evaluators import Calibration, Wanda, compute_statistics, make_mask, parse_structure, prunable_linears
from evaluators.devices import DeviceError, resolve_device, resolve_dtype, statistic_dtype
from evaluators.fingerprint import layer_lanes, lane_keys, mask_fingerprint, packed_bytes
from evaluators.fitness import FitnessEvaluator
from metric_search.cli import main
from metric_search.config import ConfigError, load_config

from conftest import char_tokenizer, tiny_llama

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is missing")


def ids(n=4, seqlen=16, seed=1):
    return torch.randint(3, 104, (n, seqlen), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_models_prune_with_float32_scores(dtype):
    model = tiny_llama().to(dtype)
    dense = {n: lin.weight.detach().clone() for n, lin in prunable_linears(model).items()}
    stats, _ = compute_statistics(model, ids(), {"t": "16-bit"}, needs=("X", "G"))
    name = next(iter(stats))
    assert stats[name]["X"].dtype == torch.float32 and stats[name]["G"].dtype == statistic_dtype(dtype)
    Wanda().prune(model, Calibration(ids(), {"t": "16-bit"}), 0.5, parse_structure(None), progress=False)
    for n, lin in prunable_linears(model).items():
        assert lin.weight.dtype == dtype
        expected = make_mask(dense[n].float().abs() * stats[n]["X"], 0.5, parse_structure(None))
        assert torch.equal(lin.weight == 0, expected | (dense[n] == 0))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_prune_saves_its_dtype_and_evaluates(tiny_checkpoint, text_dir, tmp_path, dtype, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_checkpoint), "--output", str(out), "--calib-data", f"text:{text_dir}",
                 "--nsamples", "4", "--calib-seqlen", "32", "--method", "gblm", "--dtype", dtype]) == 0
    recipe = json.loads((out / "pruning.json").read_text())
    assert recipe["dtype"] == dtype and recipe["device"] == "cpu"
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert all(lin.weight.dtype == getattr(torch, dtype) for lin in prunable_linears(reloaded).values())
    assert recipe["overall_sparsity"] == pytest.approx(0.5, abs=0.03)
    capsys.readouterr()
    assert main(["eval", str(out), "--data", f"text:{text_dir}", "--seqlen", "64", "--max-windows", "2",
                 "--json", "--dtype", dtype]) == 0
    assert 1 < json.loads(capsys.readouterr().out)["perplexity"] < 1e6


def test_default_dtype_follows_the_device():
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("", "cuda:0") == torch.bfloat16 and resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(DeviceError, match="unknown dtype"):
        resolve_dtype("float8", "cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")


# ---------------------------------------------------------------- fingerprint
def test_fingerprint_lanes_are_the_documented_sum():
    mask = torch.rand(5, 13, generator=torch.Generator().manual_seed(0)) < 0.5  # 65 bits: padded
    bits = mask.reshape(-1).tolist() + [False] * 7
    packed = [sum(int(b) << j for j, b in enumerate(bits[i:i + 8])) for i in range(0, len(bits), 8)]
    assert packed_bytes(mask).tolist() == packed
    keys = lane_keys(len(packed), mask.device).tolist()
    assert all(k % 2 for lane in keys for k in lane)  # odd keys: one changed bit always changes a lane
    expected = [sum(p * k for p, k in zip(packed, lane)) % 2 ** 64 for lane in keys]
    assert [v % 2 ** 64 for v in layer_lanes(mask).tolist()] == expected


@pytest.mark.parametrize("scheme", ["device", "host"])
def test_fingerprint_equal_masks_equal_one_position_apart_differ(scheme):
    gen = torch.Generator().manual_seed(2)
    masks = {"a": torch.rand(6, 24, generator=gen) < 0.5, "b": torch.rand(3, 7, generator=gen) < 0.5}
    base = mask_fingerprint(masks, scheme)
    assert mask_fingerprint({k: v.clone() for k, v in masks.items()}, scheme) == base
    seen = {base}
    for name, mask in masks.items():
        for i in range(mask.numel()):
            flipped = mask.clone().reshape(-1)
            flipped[i] = ~flipped[i]
            seen.add(mask_fingerprint({**masks, name: flipped.reshape(mask.shape)}, scheme))
    assert len(seen) == 1 + sum(m.numel() for m in masks.values())
    assert mask_fingerprint({"c": masks["a"], "b": masks["b"]}, scheme) != base  # names count


# ---------------------------------------------------------------- the evaluator's two restore routes
@pytest.mark.parametrize("structure", [None, "2:4"])
def test_evaluator_without_dense_copy_matches_and_restores_exactly(structure):
    model = tiny_llama()
    windows = ids(3, 24, seed=5)
    stats, _ = compute_statistics(model, ids(), {"t": "routes"}, needs=("X", "G"))
    before = {n: lin.weight.detach().clone() for n, lin in prunable_linears(model).items()}
    common = (model, stats, windows, 0.5, parse_structure(structure))
    copy_route = FitnessEvaluator(*common, fingerprint="device", dense_copy=True)
    no_copy = FitnessEvaluator(*common, fingerprint="device", dense_copy=False)
    assert no_copy.dense is None
    fn = lambda W, X, G: W.abs() * X + W.abs() * G  # noqa: E731
    a, b = copy_route.evaluate(fn), no_copy.evaluate(fn)
    assert (a.status, a.fitness, a.mask_hash, a.window_nll) == (b.status, b.fitness, b.mask_hash, b.window_nll)
    assert all(torch.equal(lin.weight, before[n]) for n, lin in prunable_linears(model).items())
    hit = no_copy.evaluate(lambda W, X, G: 3 * W.abs() * X + 3 * W.abs() * G,
                           known={b.mask_hash: {"fitness": b.fitness, "status": "ok"}})
    assert hit.reason == "mask cache" and hit.mask_hash == b.mask_hash


def test_cpu_evaluator_defaults_keep_the_host_fingerprint_and_the_copy():
    model = tiny_llama()
    evaluator = FitnessEvaluator(model, {}, ids(), 0.5, parse_structure(None))
    assert evaluator.fingerprint == "host" and evaluator.dense is not None
    masks = evaluator.masks(lambda W: W.abs())
    assert evaluator.mask_hash(masks) == mask_fingerprint(masks, "host")


# ---------------------------------------------------------------- CUDA asked for where there is none
@NO_CUDA
@pytest.mark.parametrize("command", [["eval", "{ckpt}", "--device", "cuda"],
                                     ["eval", "{ckpt}", "--device", "cuda:1"],
                                     ["prune", "--model", "{ckpt}", "--output", "{out}", "--device", "cuda"]])
def test_cuda_without_cuda_is_one_line_exit_2(tiny_checkpoint, tmp_path, capsys, command):
    args = [a.format(ckpt=tiny_checkpoint, out=tmp_path / "out") for a in command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_unknown_dtype_is_one_line_exit_2(tiny_checkpoint, tmp_path, capsys):
    assert main(["prune", "--model", str(tiny_checkpoint), "--output", str(tmp_path / "out"), "--dtype", "fp8"]) == 2
    err = capsys.readouterr().err
    assert "unknown dtype 'fp8'" in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


@NO_CUDA
def test_search_on_missing_cuda_fails_before_the_run_directory(tiny_checkpoint, tmp_path, capsys):
    assert main(["search", "--run-dir", str(tmp_path / "run"), f"model={json.dumps(str(tiny_checkpoint))}",
                 "device=cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_config_settles_device_defaults_and_checks_names():
    settled = load_config(None, ["device=cpu"]).settled()
    assert (settled.dtype, settled.mask_fingerprint, settled.race_chunk) == ("float32", "host", 1)
    assert load_config(None, ["race_chunk=4"]).settled().race_chunk == 4
    with pytest.raises(ConfigError, match="dtype"):
        load_config(None, ["dtype=float8"])
    with pytest.raises(ConfigError, match="mask_fingerprint"):
        load_config(None, ["mask_fingerprint=sha1"])
    with pytest.raises(ConfigError, match="unknown device"):
        load_config(None, ["device=tpu"]).settled()


# ---------------------------------------------------------------- architectures
def tiny_causal_lm(arch: str):
    import transformers as tf

    common = dict(vocab_size=104, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    configs = {
        "llama": (tf.LlamaConfig, dict(intermediate_size=64, num_key_value_heads=2)),
        "mistral": (tf.MistralConfig, dict(intermediate_size=64, num_key_value_heads=2)),
        "qwen2": (tf.Qwen2Config, dict(intermediate_size=64, num_key_value_heads=2)),
        "qwen3": (tf.Qwen3Config, dict(intermediate_size=64, num_key_value_heads=2, head_dim=8)),
        "gemma2": (tf.Gemma2Config, dict(intermediate_size=64, num_key_value_heads=2, head_dim=8)),
        "phi3": (tf.Phi3Config, dict(intermediate_size=64, num_key_value_heads=2)),
        "opt": (tf.OPTConfig, dict(ffn_dim=64, word_embed_proj_dim=32)),
    }
    config_class, extra = configs[arch]
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config_class(**common, **extra)).eval()


ARCHITECTURES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "opt"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_command_on_each_architecture(arch, text_dir, tmp_path, capsys):
    checkpoint = tmp_path / arch
    tiny_causal_lm(arch).save_pretrained(checkpoint)
    char_tokenizer().save_pretrained(checkpoint)
    data = ["--calib-data", f"text:{text_dir}", "--nsamples", "4", "--calib-seqlen", "32"]
    for method, extra in (("wanda", ["--sequential"]), ("sparsegpt", ["--structure", "2:4"])):
        out = tmp_path / f"{arch}-{method}"
        assert main(["prune", "--model", str(checkpoint), "--output", str(out), "--method", method, *data, *extra]) == 0
        assert json.loads((out / "pruning.json").read_text())["overall_sparsity"] == pytest.approx(0.5, abs=0.03)
    capsys.readouterr()
    assert main(["eval", str(out), "--data", f"text:{text_dir}", "--seqlen", "32", "--max-windows", "2",
                 "--json"]) == 0
    assert 1 < json.loads(capsys.readouterr().out)["perplexity"] < 1e6
    run = tmp_path / f"{arch}-run"
    assert main(["search", "--run-dir", str(run), f"model={json.dumps(str(checkpoint))}",
                 f"data={json.dumps('text:' + str(text_dir))}", "nsamples=2", "calib_seqlen=32", "fitness_windows=2",
                 "fitness_seqlen=32", "population_size=3", "iterations=2", "test_top_k=1", "test_windows=1",
                 "test_seqlen=32", 'seed_metrics=["wanda"]']) == 0
    records = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert any(r["status"] == "ok" for r in records)


def test_saved_config_without_the_new_keys_reads_as_it_was_made(tmp_path):
    from metric_search.store import RunStore

    store = RunStore.create(tmp_path / "old-run", {"device": "cpu", "seed": 0})
    assert {k: store.config()[k] for k in ("dtype", "mask_fingerprint", "race_chunk")} == \
        {"dtype": "float32", "mask_fingerprint": "host", "race_chunk": 1}


def test_search_on_a_registered_in_memory_evaluator(tmp_path):
    from metric_search.search import MetricSearch
    from metric_search.worker import problem, register_evaluator

    config = load_config(None, ["model=in-memory", "population_size=4", "iterations=3", "test_top_k=0",
                                'seed_metrics=["wanda"]', "fitness_windows=2"]).settled()
    model = tiny_llama()
    stats, _ = compute_statistics(model, ids(), {"t": "in-memory"}, needs=("X", "G"))
    evaluator = FitnessEvaluator(model, stats, ids(2, 24), 0.5, parse_structure(None))
    register_evaluator(problem(config.to_dict()), evaluator)
    search = MetricSearch(config, progress=False).fit(tmp_path / "run")
    assert search.best_ is not None and float(search.best_["fitness"]) > 1
