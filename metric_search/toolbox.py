"""The DEAP toolbox of a search, assembled in plain sight (as in DEAP's gp examples).

Individuals are ``gp.PrimitiveTree`` objects over the primitive set built from the operator registry;
fitness is perplexity (minimised). Variation is subtree crossover and mutation — node replacement
(Pruner-Zero's operator) or, with probability ``subtree_mutation``, a new random subtree (node replacement
alone keeps the tree's shape, and a small population then keeps producing duplicates) — both wrapped in
``gp.staticLimit`` on tree height for bloat control.
"""
from __future__ import annotations

import operator
import random

from deap import base, creator, gp, tools

from primitives import make_primitive_set

KNOWN_METRICS = {
    "magnitude": "abs(W)",
    "wanda": "mul(abs(W), X)",
    "gblm": "add(mul(abs(W), X), mul(100, mul(abs(W), G)))",  # α = 100: evaluators.pruners.GBLM
    "pruner-zero": "mul(abs(mul(W, W)), mms(G))",
    "ria": "mul(add(rowrel(abs(W)), colrel(abs(W))), sqrt(X))",  # evaluators.pruners.RIA's score (a = 0.5)
}

if not hasattr(creator, "FitnessMin"):
    creator.create("FitnessMin", base.Fitness, weights=(-1.0,))
if not hasattr(creator, "Individual"):
    creator.create("Individual", gp.PrimitiveTree, fitness=creator.FitnessMin)


def build_toolbox(config) -> tuple[base.Toolbox, gp.PrimitiveSet]:
    pset = make_primitive_set(leaves=tuple(config.leaves), operators=config.operators or None)
    toolbox = base.Toolbox()
    toolbox.register("expr", gp.genHalfAndHalf, pset=pset, min_=config.init_min_height, max_=config.init_max_height)
    toolbox.register("individual", tools.initIterate, creator.Individual, toolbox.expr)
    toolbox.register("select", tools.selTournament, tournsize=config.tournament_size)
    toolbox.register("mate", gp.cxOnePoint)
    toolbox.register("mutate_node", gp.mutNodeReplacement, pset=pset)
    toolbox.register("new_subtree", gp.genGrow, min_=0, max_=2)
    toolbox.register("mutate_subtree", gp.mutUniform, expr=toolbox.new_subtree, pset=pset)
    toolbox.register("mutate", lambda tree: (toolbox.mutate_subtree if random.random() < config.subtree_mutation
                                             else toolbox.mutate_node)(tree))
    limit = gp.staticLimit(key=operator.attrgetter("height"), max_value=config.max_height)
    toolbox.decorate("mate", limit)
    toolbox.decorate("mutate", limit)
    return toolbox, pset


def individual(tree) -> "creator.Individual":
    return creator.Individual(tree)
