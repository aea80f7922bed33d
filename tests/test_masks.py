import pytest
import torch

from evaluators.masks import MaskError, make_mask, nm_mask, parse_structure, unstructured_mask


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.37, 0.9])
def test_unstructured_exact_count_per_row(sparsity):
    scores = torch.randn(7, 33)
    mask = unstructured_mask(scores, sparsity)
    assert (mask.sum(1) == int(33 * sparsity)).all()
    # the zeroed entries are the lowest of their row
    kept_min = scores.masked_fill(mask, float("inf")).min(1).values
    pruned_max = scores.masked_fill(~mask, float("-inf")).max(1).values
    assert (pruned_max <= kept_min).all()


def test_unstructured_ties_prune_lower_index_first():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 0.0]])
    mask = unstructured_mask(scores, 0.5)
    assert mask.tolist() == [[True, True, False, False], [False, True, False, True]]


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_exact_count_per_group(n, m):
    scores = torch.randn(5, 64)
    mask = nm_mask(scores, n, m)
    assert (mask.reshape(5, -1, m).sum(-1) == n).all()
    groups = scores.reshape(5, -1, m)
    gm = mask.reshape(5, -1, m)
    assert (groups.masked_fill(~gm, float("-inf")).max(-1).values
            <= groups.masked_fill(gm, float("inf")).min(-1).values).all()


def test_nm_ties_deterministic():
    scores = torch.zeros(2, 8)
    mask = nm_mask(scores, 2, 4)
    assert mask.tolist() == [[True, True, False, False] * 2] * 2


def test_make_mask_dispatch():
    scores = torch.randn(3, 8)
    assert torch.equal(make_mask(scores, 0.5, parse_structure("2:4")), nm_mask(scores, 2, 4))
    assert torch.equal(make_mask(scores, 0.25, parse_structure(None)), unstructured_mask(scores, 0.25))


@pytest.mark.parametrize("text", ["3:2", "a:b", "2:2", "0:4", "2-4", ""])
def test_bad_structures(text):
    with pytest.raises(MaskError):
        parse_structure(text)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5])
def test_bad_sparsity(sparsity):
    with pytest.raises(MaskError):
        unstructured_mask(torch.randn(2, 4), sparsity)


def test_nm_width_not_multiple():
    with pytest.raises(MaskError):
        nm_mask(torch.randn(2, 6), 2, 4)


@pytest.mark.parametrize("k", [1, 5, 16, 31])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fast_masks_equal_stable_sort(k, dtype):
    from evaluators.masks import _lowest, selection, ties_by_index

    tied_rows = torch.randn(9, 32)
    tied_rows[3] = 1.0
    signed_zeros = torch.randn(9, 32)
    signed_zeros[:, ::2] = -0.0
    signed_zeros[:, 1::4] = 0.0
    for scores in (torch.randn(9, 32), torch.randint(0, 3, (9, 32)).float(), torch.zeros(9, 32), tied_rows,
                   signed_zeros):
        scores = scores.to(dtype)
        expected = _lowest(scores, k)
        assert torch.equal(unstructured_mask(scores, k / 32), expected)
        kth = torch.kthvalue(scores.float(), k, dim=-1, keepdim=True).values.to(dtype)
        assert torch.equal(ties_by_index(scores, kth, k), expected)  # whichever way the k-th value was found
        mask, kth, settled = selection(scores, k / 32)
        assert torch.equal(ties_by_index(scores, kth, k), expected)
        assert bool(settled) == torch.equal(mask, expected)


def test_layer_group_prunes_lowest_over_the_matrix_with_flat_index_ties():
    scores = torch.tensor([[3.0, 1.0, 1.0, 5.0], [1.0, 0.5, 7.0, 1.0]])
    mask = unstructured_mask(scores, 0.5, group="layer")
    # floor(8 · 0.5) = 4: 0.5 and the first three 1.0s by flat index; the fourth 1.0 (flat index 7) stays
    assert mask.tolist() == [[False, True, True, False], [True, True, False, False]]
    assert make_mask(scores, 0.5, parse_structure(None), "layer").equal(mask)
    with pytest.raises(MaskError, match="group"):
        unstructured_mask(scores, 0.5, group="column")
