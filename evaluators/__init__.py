"""Everything that touches a model: loading, text, statistics, masks, pruning, perplexity, pruners."""
from .apply import Calibration, PruneReport, ScoreError, prune_model
from .checkpoint import save_pruned, versions, write_json_atomic
from .data import (DataError, TextSpec, calibration_windows, evaluation_windows, fitness_windows,
                   load_rows, tokenize_stream)
from .masks import MaskError, Structure, make_mask, nm_mask, parse_structure, unstructured_mask
from .models import (ModelError, ModelLayout, block_linears, decoder_blocks, layout, load_model,
                     model_fingerprint, prunable_linears)
from .perplexity import PerplexityResult, perplexity, window_nlls
from .pruners import GBLM, RIA, BlockwisePruner, Magnitude, Pruner, PrunerZero, ScoreFunction, Wanda
from .stats import compute_statistics, regional_gradient_norms, regional_gradients
from .blockwise import block_outputs, prune_blockwise
from .besa import BESA
from .regional import RGS, RegionalOptimised, reconstruction_error, regional_optimisation, wanda_plus_plus
from .sparsegpt import SparseGPT, sparsegpt_prune
from .symbolic import SymbolicPruner
from .methods import BASELINES, get_pruner

__all__ = [name for name in dir() if not name.startswith("_")]
