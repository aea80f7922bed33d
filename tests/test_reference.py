"""Our baselines against what the reference implementations produced on the same windows.

The reference code (locuslab/wanda, VILA-Lab/GBLM-Pruner, IST-DASLab/sparsegpt, pprp/Pruner-Zero) stays
outside the project; ``benchmarks/reference_check.py --write tests/reference/`` ran it and recorded
``tests/reference/expected.json`` (commits, windows, agreement, perplexities) and, for the tiny model, the
reference masks (``masks_tiny.safetensors``: ``np.packbits`` of each flattened mask, True = pruned, key
``method/structure/layer``). Here only our side runs. Where a difference remains on purpose the tolerance
and its reason are stated at the assertion; docs/reference-check.md has the table and the reasons.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_llama
from evaluators import GBLM, Calibration, Magnitude, PrunerZero, SparseGPT, Wanda, parse_structure, perplexity
from evaluators.models import layout

HERE = Path(__file__).parent / "reference"
EXPECTED = json.loads((HERE / "expected.json").read_text())
TINY = EXPECTED["tiny"]
SEQUENTIAL = ("wanda", "gblm-l2", "gblm-l1", "pruner-zero")  # the reference protocol: block by block
# Score pruners: float summation order (the reference's running-mean scaler_row and one-window forwards vs
# our sums over batches of 8) moves X and G by ~1e-7 relative (GBLM l1's G by 2e-4: the reference rounds each
# term to float16), which can swap two scores that close at a row's threshold, and on SmolLM2 does (one swap
# seeds each sequential difference there). None differ on the recorded tiny run; allow this many per case.
NEAR_TIES = 8


def pruner(method: str):
    return {"magnitude": Magnitude(), "wanda": Wanda(), "gblm-l2": GBLM(grad_norm="l2"),
            "gblm-l1": GBLM(grad_norm="l1"), "sparsegpt": SparseGPT(), "pruner-zero": PrunerZero()}[method]


def prune_ours(model, method: str, structure: str, windows: torch.Tensor) -> None:
    calibration = Calibration(windows, {"source": "reference-check"}, use_cache=True)
    pruner(method).prune(model, calibration, 0.5, parse_structure(structure), sequential=method in SEQUENTIAL,
                         progress=False)


def zero_masks(model) -> dict[str, torch.Tensor]:
    return {name: linear.weight.detach() == 0 for name, linear in layout(model).linears.items()}


@pytest.fixture(scope="module")
def reference_masks():
    return load_file(HERE / "masks_tiny.safetensors")


def unpack(packed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    bits = np.unpackbits(packed.numpy(), count=like.numel())
    return torch.from_numpy(bits.astype(bool)).reshape(like.shape)


def test_fixture_records_the_windows_and_commits():
    generator = torch.Generator().manual_seed(0)
    assert torch.randint(3, 104, (8, 64), generator=generator).tolist() == TINY["calibration"]["windows"]
    assert torch.randint(3, 104, (4, 64), generator=generator).tolist() == TINY["evaluation"]["windows"]
    assert set(EXPECTED["references"]) == {"locuslab/wanda", "VILA-Lab/GBLM-Pruner", "IST-DASLab/sparsegpt",
                                           "pprp/Pruner-Zero"}
    assert all(len(c) == 40 for c in EXPECTED["references"].values())
    # the reference eval_ppl_wikitext and our perplexity() agree on the dense model (same protocol)
    dense = TINY["dense_perplexity"]
    assert dense["ours"] == pytest.approx(dense["reference_eval_ppl_wikitext"], rel=1e-5)


@pytest.mark.parametrize("case", sorted(TINY["cases"]))
def test_tiny_masks_match_reference(case, reference_masks):
    method, structure = case.split("/")
    model = tiny_llama(seed=0, layers=2)
    prune_ours(model, method, structure, torch.tensor(TINY["calibration"]["windows"]))
    ours = zero_masks(model)
    ref = {name: unpack(reference_masks[f"{case}/{name}"], mask) for name, mask in ours.items()}
    recorded = TINY["cases"][case]
    differing = sum(int((ref[n] != ours[n]).sum()) for n in ours)
    if structure == "unstructured" and method in ("magnitude", "sparsegpt"):
        # The reference zeroes ``score <= sorted[int(numel*s)]``: one entry more than floor(numel*s) per
        # comparison group (plus any ties at the threshold; none in a float init). Magnitude's group is the
        # whole matrix; SparseGPT's each 128-column block (one per matrix here). We zero exactly
        # floor(numel*s). A layer that sees the same inputs in both runs (all for magnitude, block 0 for
        # SparseGPT) holds our mask plus exactly one entry per group.
        extras = 0
        for name, mask in ours.items():
            groups = 1 if method == "magnitude" else math.ceil(mask.shape[1] / 128)
            extras += groups
            assert int(ref[name].sum()) - int(mask.sum()) == groups, name
            if method == "magnitude" or name.startswith("model.layers.0."):
                assert not (mask & ~ref[name]).any() and int((ref[name] & ~mask).sum()) == groups, name
        # SparseGPT block 1 sees block 0's outputs, which differ by those extra zeros, so its Hessians
        # differ and a few choices swap: 1 swap (2 entries) of 9216 recorded; allow 0.2% of the block.
        allowed = 0 if method == "magnitude" else int(0.002 * sum(m.numel() for m in ours.values()) / 2)
        assert extras <= differing <= extras + allowed, (differing, extras)
    elif method in SEQUENTIAL:
        assert differing <= NEAR_TIES, (case, differing)
    else:  # magnitude and SparseGPT 2:4 keep exactly n of every m: same masks (no ties in a float init)
        assert differing == 0, (case, differing)
    # perplexity of our pruned model on the recorded evaluation windows: as recorded, and where the masks
    # agree, the same as the reference-pruned model's (both measured by the harness with our perplexity())
    got = perplexity(model, torch.tensor(TINY["evaluation"]["windows"]), {}, progress=False).perplexity
    assert got == pytest.approx(recorded["ppl_ours"], rel=1e-4), case
    if recorded["differing"] == 0:
        assert recorded["ppl_ours"] == pytest.approx(recorded["ppl_reference"], rel=1e-6), case


SMOLLM2 = EXPECTED.get("smollm2")
# SmolLM2 cases run here (our side only: the whole table takes the harness an hour; these two take about a
# minute with the model load), each with the largest relative perplexity difference from the
# reference-pruned model allowed, and why:
SMOLLM2_CASES = {
    # Q4_1 weights take few distinct values, so many |W| tie at the layer's threshold: the reference's
    # ``<=`` zeroes all of them (9214 entries more than floor(numel*s), all equal to the threshold): 0.13%.
    "magnitude/unstructured": 5e-3,
    "wanda/2:4": 1e-6,  # identical masks (block-sequential X, topk vs stable sort: no ties among scores)
}
# Not run here (see docs/reference-check.md): the sequential unstructured cases, whose masks part after one
# near-tie swap (float summation order) and then follow a different path through the later blocks.


def digest(windows: torch.Tensor) -> str:
    return hashlib.sha256(windows.numpy().astype(np.int64).tobytes()).hexdigest()[:16]


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM2 is None, reason="no SmolLM2 figures recorded")
def test_smollm2_perplexities_match_reference():
    import copy

    from evaluators import calibration_windows, evaluation_windows, load_model

    with pytest.MonkeyPatch.context() as patch:  # the converted checkpoint lives in the user's cache
        patch.setenv("METRIC_SEARCH_CACHE", str(Path.home() / ".cache" / "metric-search"))
        dense, tokenizer = load_model("smollm2")
    cal, _ = calibration_windows(tokenizer, "wikitext2", n=8, seqlen=256, seed=0)
    evaluation, _ = evaluation_windows(tokenizer, "wikitext2", "test", seqlen=256, limit=4)
    assert digest(cal) == SMOLLM2["calibration"]["sha256_16"]  # the windows the references were fed
    assert digest(evaluation) == SMOLLM2["evaluation"]["sha256_16"]
    recorded_dense = SMOLLM2["dense_perplexity"]
    assert recorded_dense["ours"] == pytest.approx(recorded_dense["reference_eval_ppl_wikitext"], rel=1e-5)
    assert perplexity(dense, evaluation, {}, progress=False).perplexity == pytest.approx(recorded_dense["ours"],
                                                                                         rel=1e-5)
    for case, tolerance in SMOLLM2_CASES.items():
        model = copy.deepcopy(dense)
        prune_ours(model, *case.split("/"), cal)
        got = perplexity(model, evaluation, {}, progress=False).perplexity
        recorded = SMOLLM2["cases"][case]
        assert got == pytest.approx(recorded["ppl_ours"], rel=max(tolerance, 1e-4)), case
        assert got == pytest.approx(recorded["ppl_reference"], rel=tolerance), case
