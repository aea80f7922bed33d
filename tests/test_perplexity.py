import math

import torch
import torch.nn.functional as F

from evaluators import evaluation_windows, perplexity, tokenize_stream
from evaluators.data import consecutive_windows


def test_perplexity_matches_direct_computation(tiny_model):
    windows = torch.randint(3, 104, (5, 12), generator=torch.Generator().manual_seed(0))
    result = perplexity(tiny_model, windows, {"source": "random"}, batch_size=2, progress=False)
    with torch.no_grad():
        logits = tiny_model(windows).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert math.isclose(result.perplexity, math.exp(nll.item()), rel_tol=1e-5)
    assert result.tokens == 5 * 11 and len(result.window_nll) == 5
    assert result.protocol == {"source": "random"}


def test_protocol_one_bos_join_and_tail_dropped(tokenizer, text_dir):
    rows = ["ab\n", "", "cd\n"]
    ids = tokenize_stream(tokenizer, rows)
    assert ids[0].item() == tokenizer.bos_token_id
    assert (ids == tokenizer.bos_token_id).sum() == 1
    assert tokenizer.convert_ids_to_tokens(ids[1:].tolist()) == list("ab\n\n\n\n\ncd\n")
    windows = consecutive_windows(torch.arange(10), 4)
    assert windows.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    w, spec = evaluation_windows(tokenizer, f"text:{text_dir}", "test", seqlen=64, limit=3)
    assert w.shape == (3, 64) and w[0, 0].item() == tokenizer.bos_token_id
    assert spec.describe()["split"] == "test" and spec.describe()["n_windows"] == 3
