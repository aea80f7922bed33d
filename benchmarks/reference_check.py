"""Our baselines against the reference implementations, run outside the project on the same windows.

    .venv/bin/python benchmarks/reference_check.py --references /work/refs [--model tiny|smollm2] \
        [--write tests/reference/]

``--references`` holds the authors' code, extracted outside this project, with its commit in ``.commit``
(commands in ``docs/reference-check.md``)::

    wanda/       locuslab/wanda           lib.prune.prune_magnitude, prune_wanda; lib.eval.eval_ppl_wikitext
    gblm/        VILA-Lab/GBLM-Pruner     gradient_computation.gradient_computation, lib.prune.prune_gblm
    sparsegpt/   IST-DASLab/sparsegpt     llama.llama_sequential (SparseGPT.fasterprune)
    prunerzero/  pprp/Pruner-Zero         lib.gradient_computation, lib.prune.prune_pruner_zero, data/best_tree.json

Each reference runs in this process (the ``lib`` packages imported as ``ref_wanda``, ``ref_gblm``,
``ref_prunerzero``), on CPU in float32, on a copy of the dense model fed OUR calibration windows; ours on
another copy; masks (``weight == 0``), G and perplexity (``evaluators.perplexity``, same windows) are compared.
Score pruners run ``sequential=True``: the reference protocol (X from the already-pruned blocks' outputs,
G from the dense model); the one-shot column is our one-shot mode.

Shims (the reference code itself is not edited):
* ``get_loaders`` of each reference module returns ``[(window, window)]`` from our windows (labels = window).
* ``model.seqlen`` = our window length; ``model.hf_device_map = {}``; ``device = cpu``; while reference code
  runs, ``torch.Tensor.cuda`` returns the tensor and ``torch.cuda.synchronize`` does nothing (Wanda's
  ``prune_magnitude`` sorts on ``.cuda()``; ``fasterprune`` synchronises).
* Decoder layers: transformers 5 needs ``position_embeddings``, which the 2023 code does not pass; each
  layer's forward is wrapped to add ``model.model.rotary_emb(x, position_ids)`` (positions ``0..T-1`` when
  none are given, as in ``llama_sequential``). Layers return a tensor, so ``layer(...)[0]`` is the window.
* ``transformers.AdamW`` (gone in transformers 5; imported, never stepped) = ``torch.optim.AdamW``;
  Pruner-Zero's ``lib/prune.py`` imports ``.ablate``, absent from its repository: an empty stub module.
* The gradient scripts' ``__main__`` loop is re-driven line for line (``model.train()``, forward with
  ``labels``, ``backward``, ``update_gradient``, ``optimizer.zero_grad()``, ``sqrt`` of the l2 sums), but the
  l2 norms stay float32 (the script saves float16) and the l1 accumulators are float32 (float16 in
  ``gradients_init``); ``update_gradient`` still rounds each l1 term to float16, as written.
* fp16 -> fp32: every model runs in float32. SparseGPT: ``llama_sequential``'s global ``args`` is set
  (``true_sequential=False``, ``wbits=16``, ``percdamp=0.01``, ``blocksize=128``, no layer filter).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib.machinery
import importlib.util
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from evaluators import (GBLM, Calibration, Magnitude, PrunerZero, SparseGPT, Wanda, calibration_windows,
                        evaluation_windows, layout, load_model, parse_structure, perplexity)
from evaluators.stats import gradient_norms

ROOT = Path(__file__).resolve().parents[1]

REPOS = {"wanda": "locuslab/wanda", "gblm": "VILA-Lab/GBLM-Pruner", "sparsegpt": "IST-DASLab/sparsegpt",
         "prunerzero": "pprp/Pruner-Zero"}
SCALE = 100  # GBLM's and Pruner-Zero's --scale default: their G is 100 x ours
SPARSITY = 0.5
METHODS = ("magnitude", "wanda", "gblm-l2", "gblm-l1", "sparsegpt", "pruner-zero")
STRUCTURES = ("unstructured", "2:4")
SCORE_METHODS = ("wanda", "gblm-l2", "gblm-l1", "pruner-zero")  # the ones with a one-shot mode
OURS = {"magnitude": Magnitude, "wanda": Wanda, "gblm-l2": lambda: GBLM(grad_norm="l2"),
        "gblm-l1": lambda: GBLM(grad_norm="l1"), "sparsegpt": SparseGPT, "pruner-zero": PrunerZero}


def _package(alias: str, directory: Path, stubs: dict | None = None):
    """``directory`` (a folder without ``__init__.py``) imported as package ``alias``."""
    spec = importlib.machinery.ModuleSpec(alias, None, is_package=True)
    spec.submodule_search_locations = [str(directory)]
    sys.modules[alias] = importlib.util.module_from_spec(spec)
    for name, module in (stubs or {}).items():
        sys.modules[f"{alias}.{name}"] = module
    return sys.modules[alias]


def _file(alias: str, path: Path):
    spec = importlib.util.spec_from_file_location(alias, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def quiet():
    """The reference code prints per layer; keep it, and show it only if something fails."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    except BaseException:
        sys.stderr.write(out.getvalue()[-4000:] + err.getvalue()[-4000:])
        raise


class References:
    def __init__(self, root: Path):
        import transformers
        self.root = root
        transformers.AdamW = torch.optim.AdamW  # shim: removed from transformers 5, imported by the scripts
        with quiet():
            _package("ref_wanda", root / "wanda" / "lib")
            _package("ref_gblm", root / "gblm" / "lib")
            _package("ref_prunerzero", root / "prunerzero" / "lib",
                     {"ablate": SimpleNamespace(AblateGPT=None)})  # shim: lib/ablate.py is not in the repo
            self.wanda = importlib.import_module("ref_wanda.prune")
            self.wanda_eval = importlib.import_module("ref_wanda.eval")
            self.gblm = importlib.import_module("ref_gblm.prune")
            self.gblm_grad = _file("ref_gblm_gradient", root / "gblm" / "gradient_computation.py")
            self.pz = importlib.import_module("ref_prunerzero.prune")
            self.pz_grad = importlib.import_module("ref_prunerzero.gradient_computation")
            self.pz_tree = importlib.import_module("ref_prunerzero.gptree")
            sys.path.insert(0, str(root / "sparsegpt"))  # llama.py does `from sparsegpt import *`
            self.sparsegpt = _file("ref_sparsegpt_llama", root / "sparsegpt" / "llama.py")
        marks = {REPOS[name]: root / name / ".commit" for name in REPOS}  # `git rev-parse HEAD > .commit`
        self.commits = {repo: m.read_text().strip() if m.is_file() else "unknown" for repo, m in marks.items()}


def loader(windows: torch.Tensor) -> list:  # what get_loaders returns: (input, labels) pairs, batch 1
    return [(w.unsqueeze(0), w.unsqueeze(0).clone()) for w in windows]


def _with_rotary(forward, rotary):
    def call(hidden_states, *args, **kwargs):
        if kwargs.get("position_embeddings") is None:
            ids = kwargs.get("position_ids")
            if ids is None:
                ids = torch.arange(hidden_states.shape[1], device=hidden_states.device).unsqueeze(0)
            kwargs["position_embeddings"] = rotary(hidden_states, ids)
        return forward(hidden_states, *args, **kwargs)
    return call


@contextlib.contextmanager
def reference_env(model, windows: torch.Tensor, modules=()):
    saved = torch.Tensor.cuda, torch.cuda.synchronize
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.cuda.synchronize = lambda *a, **k: None
    for module in modules:
        module.get_loaders = lambda *a, **k: (loader(windows), None)
    model.seqlen, model.hf_device_map = windows.shape[1], {}
    for layer in model.model.layers:
        layer.forward = _with_rotary(layer.forward, model.model.rotary_emb)
    try:
        with quiet():
            yield
    finally:
        torch.Tensor.cuda, torch.cuda.synchronize = saved
        for layer in model.model.layers:
            del layer.forward


def reference_gradients(refs: References, module, dense, windows) -> dict[str, dict[str, torch.Tensor]]:
    """The gradient script's ``__main__`` loop on a dense copy: ``{"l2": {key: G}, "l1": {key: G}}``."""
    model = copy.deepcopy(dense)
    with reference_env(model, windows):
        cls = getattr(module, "gradient_computation", None) or module.GradientComputation  # GBLM / Pruner-Zero
        grad_up = cls(model, SCALE)
        grad_up.gradients_l1 = {k: v.float() for k, v in grad_up.gradients_l1.items()}  # shim: fp16 -> fp32
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, eps=0.01)
        optimizer.zero_grad()
        model.train()
        for nsample, (input_ids, labels) in enumerate(loader(windows), 1):
            model(input_ids=input_ids, labels=labels).loss.backward()
            grad_up.update_gradient(model, nsample)
            optimizer.zero_grad()
    return {"l2": {k: torch.sqrt(v) for k, v in grad_up.gradients_l2.items()}, "l1": grad_up.gradients_l1}


def run_reference(refs: References, method: str, model, windows, structure, grad_files: dict) -> None:
    n, m = (0, 0) if structure.unstructured else (structure.n, structure.m)
    cpu = torch.device("cpu")
    args = SimpleNamespace(sparsity_ratio=SPARSITY, nsamples=len(windows), seed=0, use_variant=False,
                           gradient_inv=False, gradient_path=grad_files.get(method))
    with reference_env(model, windows, (refs.wanda, refs.gblm, refs.pz)):
        if method == "magnitude":
            refs.wanda.prune_magnitude(args, model, None, cpu, prune_n=n, prune_m=m)
        elif method == "wanda":
            refs.wanda.prune_wanda(args, model, None, cpu, prune_n=n, prune_m=m)
        elif method.startswith("gblm"):
            refs.gblm.prune_gblm(args, model, None, cpu, prune_n=n, prune_m=m)
        elif method == "pruner-zero":
            engine = refs.pz_tree.GPTree.load_tree(refs.root / "prunerzero" / "data" / "best_tree.json")
            refs.pz.prune_pruner_zero(args, model, None, cpu, prune_n=n, prune_m=m, engine=engine)
        elif method == "sparsegpt":
            refs.sparsegpt.args = SimpleNamespace(
                nsamples=len(windows), sparsity=SPARSITY, prunen=n, prunem=m, percdamp=0.01, blocksize=128,
                wbits=16, minlayer=-1, maxlayer=1000, prune_only="", invert=False, true_sequential=False)
            refs.sparsegpt.llama_sequential(model, loader(windows), cpu)
        else:
            raise ValueError(method)


def masks(model) -> dict[str, torch.Tensor]:
    return {name: linear.weight.detach() == 0 for name, linear in layout(model).linears.items()}


def compare(ref: dict, our: dict) -> dict:
    """Mask agreement in total, per layer and per decoder block (in order: where a difference starts)."""
    differing = {n: int((ref[n] != our[n]).sum()) for n in ref}
    entries = sum(t.numel() for t in ref.values())
    worst = max(differing, key=lambda n: differing[n] / ref[n].numel())
    dz = [int(ref[n].sum()) - int(our[n].sum()) for n in ref]
    blocks: dict[int, int] = {}
    for n, d in differing.items():
        i = int(n.split(".")[-3])  # model.layers.<i>.<module>.<linear>
        blocks[i] = blocks.get(i, 0) + d
    per_block = [blocks[i] for i in sorted(blocks)]
    return {"differing": sum(differing.values()), "entries": entries,
            "fraction": sum(differing.values()) / entries, "worst_layer": worst,
            "worst_fraction": differing[worst] / ref[worst].numel(), "per_block": per_block,
            "zeros_ref_minus_ours": {"min": min(dz), "max": max(dz), "sum": sum(dz)}}


def magnitude_ties_only(dense, ref: dict, our: dict, structure) -> bool:
    """Whether every mask difference is a choice between equal |W|: unstructured, the reference's extra
    entries all equal its threshold ``sorted[int(numel*s)]``; N:M, each group prunes the same |W| values."""
    for name, linear in layout(dense).linears.items():
        a = linear.weight.detach().abs()
        if structure.unstructured:
            extra = ref[name] & ~our[name]
            thresh = a.flatten().sort().values[int(a.numel() * SPARSITY)]
            if (our[name] & ~ref[name]).any() or not (a[extra] == thresh).all():
                return False
        else:
            def pruned(mask):
                return torch.where(mask, a, torch.inf).reshape(a.shape[0], -1, structure.m).sort(-1).values
            if not torch.equal(pruned(ref[name]), pruned(our[name])):
                return False
    return True


def g_difference(ref: dict, our: dict, prefix: str) -> float:
    """Worst layer's max |100·G_ours − G_ref| / max |G_ref| (keys ``{name}_layer_{i}`` vs ``model.layers.i.name``)."""
    worst = 0.0
    for key, g in ref.items():
        name, i = key.rsplit("_layer_", 1)
        mine = our[f"{prefix}.{i}.{name}"].float() * SCALE
        worst = max(worst, ((mine - g.float()).abs().max() / g.float().abs().max()).item())
    return worst


def perplexity_of(model, windows) -> float:
    return perplexity(model, windows, {"source": "reference-check"}, progress=False).perplexity


def pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.flatten().numpy().astype(np.uint8)))


def tiny_setup():
    model = _file("reference_conftest", ROOT / "tests" / "conftest.py").tiny_llama(seed=0, layers=2)
    generator = torch.Generator().manual_seed(0)
    cal = torch.randint(3, model.config.vocab_size, (8, 64), generator=generator)
    ev = torch.randint(3, model.config.vocab_size, (4, 64), generator=generator)
    doc = {"model": "tests/conftest.py tiny_llama(seed=0, layers=2)",
           "calibration": {"how": "torch.randint(3, 104, (8, 64), generator=torch.Generator().manual_seed(0))",
                           "windows": cal.tolist()},
           "evaluation": {"how": "torch.randint(3, 104, (4, 64)), same generator, next draw",
                          "windows": ev.tolist()}}
    return model, cal, ev, doc


def smollm2_setup(data_dir):
    model, tokenizer = load_model("smollm2")
    cal, cal_spec = calibration_windows(tokenizer, "wikitext2", n=8, seqlen=256, seed=0, data_dir=data_dir)
    ev, ev_spec = evaluation_windows(tokenizer, "wikitext2", "test", seqlen=256, limit=4, data_dir=data_dir)
    digest = {name: hashlib.sha256(w.numpy().astype(np.int64).tobytes()).hexdigest()[:16]
              for name, w in (("calibration", cal), ("evaluation", ev))}
    doc = {"model": "evaluators.models.load_model('smollm2') (SmolLM2-135M-Instruct, Q4_1 dequantised, float32)",
           "calibration": {**cal_spec.describe(), "sha256_16": digest["calibration"]},
           "evaluation": {**ev_spec.describe(), "sha256_16": digest["evaluation"]}}
    return model, cal, ev, doc


def check(refs: References, model_name: str, methods, structures, data_dir=None):
    start = time.perf_counter()
    dense, cal, ev, doc = tiny_setup() if model_name == "tiny" else smollm2_setup(data_dir)
    dense.eval()
    calibration = Calibration(cal, {"source": "reference-check", "model": model_name}, use_cache=True)
    result = {**doc, "dense_perplexity": {"ours": perplexity_of(dense, ev)}, "cases": {}}
    with reference_env(dense, ev, ()):  # the evaluation protocols agree: reference eval on the dense model
        result["dense_perplexity"]["reference_eval_ppl_wikitext"] = refs.wanda_eval.eval_ppl_wikitext(
            dense, SimpleNamespace(input_ids=ev.reshape(1, -1)), 1, torch.device("cpu"))
    grad_files, g_diff = {}, {}
    if any(m.startswith("gblm") or m == "pruner-zero" for m in methods):
        tmp = Path(tempfile.mkdtemp(prefix="reference-check-"))
        gblm = reference_gradients(refs, refs.gblm_grad, dense, cal)
        gradients = {"gblm-l2": gblm["l2"], "gblm-l1": gblm["l1"],
                     "pruner-zero": reference_gradients(refs, refs.pz_grad, dense, cal)["l2"]}
        for key, g in gradients.items():
            grad_files[key] = str(tmp / f"{key}.pth")
            torch.save(g, grad_files[key])
            mine = gradient_norms(copy.deepcopy(dense), cal, "l1" if key == "gblm-l1" else "l2", progress=False)
            g_diff[key] = g_difference(g, mine, layout(dense).prefix)
    ref_masks = {}
    for method in methods:
        for text in structures:
            case = f"{method}/{text}"
            print(f"[{model_name}] {case} ({time.perf_counter() - start:.0f} s) ...", file=sys.stderr, flush=True)
            result["cases"][case], ref_masks[case] = run_case(refs, method, parse_structure(text), dense, cal,
                                                              ev, calibration, grad_files)
            if method in g_diff:
                result["cases"][case]["g_max_rel_diff"] = g_diff[method]
            print(table_row(case, result["cases"][case]), flush=True)
    return result, ref_masks


def run_case(refs, method, structure, dense, cal, ev, calibration, grad_files):
    ref_model, our_model = copy.deepcopy(dense), copy.deepcopy(dense)
    run_reference(refs, method, ref_model, cal, structure, grad_files)
    sequential = method in SCORE_METHODS
    OURS[method]().prune(our_model, calibration, SPARSITY, structure, sequential=sequential, progress=False)
    ref, our = masks(ref_model), masks(our_model)
    row = {"ours_mode": "sequential" if sequential else ("block-wise" if method == "sparsegpt" else "data-free"),
           **compare(ref, our),
           "weights_max_abs_diff": max((a.weight - b.weight).abs().max().item() for a, b in zip(
               layout(ref_model).linears.values(), layout(our_model).linears.values())),
           "ppl_reference": perplexity_of(ref_model, ev), "ppl_ours": perplexity_of(our_model, ev)}
    if method == "magnitude":
        row["ties_only"] = magnitude_ties_only(dense, ref, our, structure)
    if sequential:
        one_shot = copy.deepcopy(dense)
        OURS[method]().prune(one_shot, calibration, SPARSITY, structure, sequential=False, progress=False)
        row["oneshot_fraction"] = compare(ref, masks(one_shot))["fraction"]
        row["ppl_ours_oneshot"] = perplexity_of(one_shot, ev)
    return row, ref


HEADER = ("| baseline | ours | masks differing (all) | worst layer | first block differing (entries) | "
          "zeros/layer ref−ours | max rel ΔG | ppl ref | ppl ours | one-shot: differing, ppl |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def table_row(case: str, r: dict) -> str:
    z, blocks = r["zeros_ref_minus_ours"], r["per_block"]
    first = next((f"{i} ({d})" for i, d in enumerate(blocks) if d), "–")
    one = f"{r['oneshot_fraction']:.2%}, {r['ppl_ours_oneshot']:.3f}" if "oneshot_fraction" in r else "–"
    g = f"{r['g_max_rel_diff']:.1e}" if "g_max_rel_diff" in r else "–"
    ties = " (ties only)" if r.get("ties_only") and r["differing"] else ""
    worst = f"{r['worst_fraction']:.3%} ({r['worst_layer'].split('.', 2)[-1]})" if r["differing"] else "–"
    return (f"| {case} | {r['ours_mode']} | {r['differing']}/{r['entries']} ({r['fraction']:.4%}){ties} | "
            f"{worst} | {first} | {z['min']}..{z['max']} "
            f"(Σ {z['sum']}) | {g} | {r['ppl_reference']:.3f} | {r['ppl_ours']:.3f} | {one} |")


def write(out: Path, model_name: str, result: dict, ref_masks: dict, commits: dict) -> None:
    """Merge into ``expected.json`` (cases run now replace their old entries) and, for tiny, the masks."""
    from safetensors.torch import load_file, save_file
    out.mkdir(parents=True, exist_ok=True)
    path = out / "expected.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc["references"] = commits
    doc["protocol"] = {
        "sparsity": SPARSITY, "gblm_scale": SCALE, "masks": "weight == 0 after pruning",
        "ours": "score pruners sequential=True (reference protocol); magnitude data-free; sparsegpt block-wise",
        "perplexity": "evaluators.perplexity on the evaluation windows (exp of mean next-token NLL)"}
    cases = {**doc.get(model_name, {}).get("cases", {}), **result["cases"]}
    doc[model_name] = {**result, "cases": dict(sorted(cases.items()))}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    if model_name == "tiny":
        file = out / "masks_tiny.safetensors"
        tensors = load_file(file) if file.is_file() else {}
        tensors.update({f"{case}/{layer}": pack(mask) for case, layer_masks in ref_masks.items()
                        for layer, mask in layer_masks.items()})
        save_file(dict(sorted(tensors.items())), file, metadata={
            "format": "np.packbits of the flattened bool mask (True = pruned), key method/structure/layer",
            "references": json.dumps(commits)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=Path, required=True)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--structures", default=",".join(STRUCTURES))
    parser.add_argument("--data-dir", default=None, help="folder with wikitext-2/ (smollm2)")
    parser.add_argument("--write", type=Path, default=None, help="fixture folder, e.g. tests/reference/")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    refs = References(args.references)
    print(HEADER, flush=True)
    result, ref_masks = check(refs, args.model, args.methods.split(","), args.structures.split(","), args.data_dir)
    d = result["dense_perplexity"]
    print(f"\ndense perplexity: ours {d['ours']:.4f}, reference eval_ppl_wikitext {d['reference_eval_ppl_wikitext']:.4f}")
    print("references: " + ", ".join(f"{k}@{v[:7]}" for k, v in refs.commits.items()))
    if args.write:
        write(args.write, args.model, result, ref_masks, refs.commits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
