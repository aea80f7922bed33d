import pytest
import torch

from evaluators import DataError, calibration_windows, fitness_windows, load_rows
from evaluators.data import CALIBRATION_FRACTION, token_stream
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
