import pytest
import torch

from evaluators import DataError, calibration_windows, fitness_windows, load_rows
from evaluators.data import (C4_SHARDS, CALIBRATION_FRACTION, CALIBRATION_PRESETS, check_source, resolve_calibration,
                             token_stream)
from conftest import SHARED_DATA


def test_text_source_file_and_folder(text_dir):
    assert load_rows(f"text:{text_dir}", "valid") == load_rows(f"text:{text_dir / 'valid.txt'}", "test")


def test_calibration_and_fitness_windows_are_disjoint(tokenizer, text_dir):
    source = f"text:{text_dir}"
    stream = token_stream(tokenizer, source, "valid")
    cut = int(stream.numel() * CALIBRATION_FRACTION)
    cal, cal_spec = calibration_windows(tokenizer, source, n=8, seqlen=32, seed=3)
    fit, fit_spec = fitness_windows(tokenizer, source, n=4, seqlen=32)
    assert cal.shape == (8, 32) and fit.shape == (4, 32)
    # each calibration window is a slice of the first region, each fitness window of the second
    first, second = stream[:cut].tolist(), stream[cut:].tolist()
    as_text = lambda ids: ",".join(map(str, ids))
    assert all(as_text(w) in as_text(first) for w in cal.tolist())
    assert fit[0].tolist() == second[:32]  # spread evenly: the first and the last whole window
    last = len(second) // 32 - 1
    assert fit[-1].tolist() == second[last * 32:(last + 1) * 32]
    assert len({as_text(w) for w in fit.tolist()}) == 4
    assert cal_spec.region == "calibration" and fit_spec.region == "fitness"
    again, _ = calibration_windows(tokenizer, source, n=8, seqlen=32, seed=3)
    other, _ = calibration_windows(tokenizer, source, n=8, seqlen=32, seed=4)
    assert torch.equal(cal, again) and not torch.equal(cal, other)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared WikiText-2 not present")
def test_wikitext_from_env_and_data_dir(monkeypatch, tmp_path):
    rows = load_rows("wikitext2", "valid")
    assert len(rows) > 3000 and "Homarus gammarus" in "".join(rows[:10])
    monkeypatch.delenv("METRIC_SEARCH_DATA")
    assert load_rows("wikitext2", "test", data_dir=SHARED_DATA) == load_rows("wikitext2", "test", SHARED_DATA / "wikitext-2")
    (tmp_path / "wiki.test.raw").write_text("raw layout\n")
    assert load_rows("wikitext2", "test", data_dir=tmp_path) == ["raw layout\n"]


def test_offline_without_local_copy_names_both_routes(monkeypatch, tmp_path):
    monkeypatch.delenv("METRIC_SEARCH_DATA", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_rows("wikitext2", "test", data_dir=tmp_path / "nothing")
    message = str(err.value)
    assert "METRIC_SEARCH_DATA" in message and "hub" in message and "\n" not in message


@pytest.mark.parametrize("source", ["nope", "text:/does/not/exist.txt"])
def test_bad_sources(source):
    with pytest.raises(DataError):
        load_rows(source, "valid")


def test_text_shorter_than_a_window(tokenizer, tmp_path):
    (tmp_path / "valid.txt").write_text("tiny\n")
    with pytest.raises(DataError, match="fewer than one window"):
        calibration_windows(tokenizer, f"text:{tmp_path}", n=2, seqlen=64)


def _c4_shard(folder, n_docs=30, seed=0):
    """A small C4-like shard (JSON lines, gzipped) with documents of 100 to 3000 characters."""
    import gzip
    import json
    import random as pyrandom

    rng = pyrandom.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / C4_SHARDS["train"]
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for i in range(n_docs):
            text = " ".join(rng.choice(["prune", "the", "weights", "of", "a", "model"]) for _ in range(rng.randint(20, 500)))
            out.write(json.dumps({"text": text, "timestamp": "2019", "url": f"u{i}"}) + "\n")
    return path


def _wanda_get_c4(documents, tokenizer, nsamples, seed, seqlen):
    """Wanda's lib/data.py get_c4 sampler, restated for the test (global ``random``, strict ``>``)."""
    import random as pyrandom

    pyrandom.seed(seed)
    out = []
    for _ in range(nsamples):
        while True:
            i = pyrandom.randint(0, len(documents) - 1)
            enc = tokenizer(documents[i], return_tensors="pt")
            if enc.input_ids.shape[1] > seqlen:
                break
        i = pyrandom.randint(0, enc.input_ids.shape[1] - seqlen - 1)
        out.append(enc.input_ids[:, i:i + seqlen])
    return torch.cat(out)


def test_reference_preset_is_the_reference_protocol():
    assert CALIBRATION_PRESETS["reference"] == {"source": "c4", "n": 128, "seqlen": 2048, "seed": 0}
    assert resolve_calibration("reference", n=8, seed=None) == {"source": "c4", "n": 8, "seqlen": 2048, "seed": 0}
    assert resolve_calibration(None)["source"] == "wikitext2"
    with pytest.raises(DataError, match="unknown calibration preset"):
        resolve_calibration("c5")


def test_c4_windows_follow_the_reference_sampler(tokenizer, tmp_path, monkeypatch):
    monkeypatch.delenv("METRIC_SEARCH_DATA", raising=False)
    shard = _c4_shard(tmp_path / "c4" / "en")
    preset = CALIBRATION_PRESETS["reference"]
    windows, spec = calibration_windows(tokenizer, "c4", preset["n"], preset["seqlen"], preset["seed"], tmp_path)
    assert windows.shape == (128, 2048) and spec.region == "documents" and spec.split == "train"
    documents = load_rows(f"c4:{shard}", "train")
    assert torch.equal(windows, _wanda_get_c4(documents, tokenizer, 128, 0, 2048))
    explicit, _ = calibration_windows(tokenizer, f"c4:{shard}", 4, 256, 1)
    assert torch.equal(explicit, _wanda_get_c4(documents, tokenizer, 4, 1, 256))


def test_c4_offline_without_a_shard_names_both_routes(monkeypatch, tmp_path):
    monkeypatch.delenv("METRIC_SEARCH_DATA", raising=False)

    def offline(*_args, **_kwargs):
        raise DataError("cannot fetch allenai/c4 from the hub (ConnectionError)")

    monkeypatch.setattr("evaluators.data._hub_rows", offline)
    with pytest.raises(DataError) as err:
        check_source("c4", "train", tmp_path)
    message = str(err.value)
    assert "METRIC_SEARCH_DATA" in message and "c4:PATH" in message and "hub" in message and "\n" not in message


def test_c4_shard_errors(tokenizer, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("not json\n")
    with pytest.raises(DataError, match="not a C4 shard"):
        load_rows(f"c4:{bad}", "train")
    short = _c4_shard(tmp_path / "short", n_docs=3)
    with pytest.raises(DataError, match="no document with more than"):
        calibration_windows(tokenizer, f"c4:{short}", 1, 100_000, 0)
