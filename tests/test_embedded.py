"""End-to-end checks on the embedded SmolLM2-135M (slow: tens of seconds on 2 CPU cores)."""
from pathlib import Path

import pytest

from evaluators import Calibration, Wanda, calibration_windows, evaluation_windows, load_model, parse_structure
from evaluators import perplexity, prunable_linears

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    # Share the converted checkpoint with the user's cache instead of converting it once per test run.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("METRIC_SEARCH_CACHE", str(Path.home() / ".cache" / "metric-search"))
        return load_model("smollm2")


def test_smollm2_wanda_end_to_end(smollm2):
    model, tokenizer = smollm2
    linears = prunable_linears(model)
    assert len(linears) == 210  # 30 blocks × 7 Linear layers
    windows, spec = evaluation_windows(tokenizer, "wikitext2", "test", seqlen=256, limit=4)
    dense = perplexity(model, windows, spec.describe(), progress=False)
    assert 5 < dense.perplexity < 80, dense
    cal, cal_spec = calibration_windows(tokenizer, n=4, seqlen=256)
    report = Wanda().prune(model, Calibration(cal, cal_spec.describe()), 0.5, parse_structure(None), progress=False)
    assert report.overall_sparsity == pytest.approx(0.5)
    pruned = perplexity(model, windows, spec.describe(), progress=False)
    assert dense.perplexity < pruned.perplexity < 10 * dense.perplexity, (dense, pruned)
