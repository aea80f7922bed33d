"""Search configuration: every parameter, its default and its type, in one place.

A run is configured by a TOML file (``runs/*.toml``, flat ``key = value`` pairs or the same keys under
tables, which are flattened) and ``key=value`` overrides from the command line, which are parsed as TOML
values (``iterations=20``, ``structure="2:4"`` or ``structure=2:4``, ``seed_metrics=["wanda"]``).
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from evaluators.devices import DTYPES, DeviceError, dtype_name, resolve_device, resolve_dtype
from evaluators.fingerprint import SCHEMES, default_scheme
from evaluators.allocation import check_allocation
from evaluators.masks import MaskError, parse_structure, resolve_sparsity


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line for the user."""


# The parts a key can play, declared on each field below with ``part(default, *parts)``:
# PROBLEM: defines the fitness problem (equal configs share one evaluator; resume may not change it);
# RIVAL: decides a raced or gated record (resume may not change it in a racing or gated run);
# RACE / GATE: used only with racing / with the proxy gate; COMPARED: reported by ``analyze --compare``.
PARTS = PROBLEM, RIVAL, RACE, GATE, COMPARED = "problem", "rival", "race", "gate", "compared"
FITNESS_LOSSES = {"perplexity": "nll", "kl": "kl"}  # config value -> the evaluator's per-window loss


def part(default, *parts: str, legacy=dataclasses.MISSING):
    """A field with its default, the parts it plays and, for a key added after runs were made with the project,
    ``legacy``: the value those runs behaved as (a saved config without the key reads as it)."""
    metadata = {"parts": parts} if legacy is dataclasses.MISSING else {"parts": parts, "legacy": legacy}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class SearchConfig:
    # where the run lives
    name: str = "search"
    output_dir: str = "runs"
    # the model and the pruning problem
    model: str = part("smollm2", PROBLEM, COMPARED)
    sparsity: float = part(0.5, PROBLEM, COMPARED)
    structure: str = part("unstructured", PROBLEM, COMPARED)
    allocation: str = part("uniform", PROBLEM, COMPARED, legacy="uniform")  # uniform | owl (evaluators/allocation.py)
    # where it runs (evaluators/devices.py); empty values are settled from the device when a run starts:
    # device cpu | cuda | cuda:N | auto (accelerate's device map over the visible GPUs); dtype float32 | bfloat16 |
    # float16 (empty: float32 on the CPU, bfloat16 on a GPU); mask_fingerprint host | device (empty: host on the CPU)
    device: str = part("cpu", PROBLEM)
    dtype: str = part("", PROBLEM, legacy="float32")
    mask_fingerprint: str = part("", PROBLEM, legacy="host")
    # data: calibration windows (random, valid's first region) and fitness windows (valid's second region)
    data: str = part("wikitext2", PROBLEM, COMPARED)
    data_dir: str = part("", PROBLEM)
    nsamples: int = part(16, PROBLEM, COMPARED)
    calib_seqlen: int = part(512, PROBLEM, COMPARED)
    grad_norm: str = part("l2", PROBLEM, COMPARED)
    # per-window loss on the fitness windows: "perplexity" (mean token NLL) or "kl" (mean token KL divergence
    # from the dense model; the fitness is then exp of the mean KL; evaluators/fitness.py)
    fitness: str = part("perplexity", PROBLEM, COMPARED, legacy="perplexity")
    fitness_windows: int = part(8, PROBLEM, COMPARED)
    fitness_seqlen: int = part(256, PROBLEM, COMPARED)
    batch_size: int = part(4, PROBLEM)
    # the search space
    leaves: list[str] = part(["W", "X", "G"], PROBLEM, COMPARED)
    operators: list[str] = part([], COMPARED)  # empty: every registered operator
    init_min_height: int = 1
    init_max_height: int = 3
    max_height: int = 6
    seed_metrics: list[str] = field(default_factory=list)  # expressions or baseline names
    # the genetic programme
    mode: str = part("steady", RIVAL)  # "steady" (Pruner-Zero's Algorithm 1) | "generational" (mu + lambda)
    population_size: int = part(50, RIVAL, COMPARED)
    iterations: int = part(300, COMPARED)  # steady: children; generational: generations
    top_k: int = part(10, RIVAL)  # steady: parents are drawn by tournament among the best top_k
    tournament_size: int = 3
    crossover_prob: float = 0.5  # generational; steady always crosses over
    mutation_prob: float = 0.5
    subtree_mutation: float = 0.5  # share of mutations that grow a new subtree instead of replacing a node
    offspring: int = 50  # generational: lambda
    max_regenerate: int = 20  # tries to produce a child unlike its parents and the population
    seed: int = part(0, PROBLEM, COMPARED)
    # multi-fidelity (all off by default; see evaluators/fitness.py)
    racing: bool = part(False, RIVAL)  # steady: stop a child once certainly worse than the member it must beat
    # that member: "top_k" (the last possible parent) or "worst" (of the population)
    race_against: str = part("top_k", RIVAL, RACE, legacy="worst")
    race_min_windows: int = part(2, RIVAL, RACE)
    race_z: float = part(2.0, RIVAL, RACE)
    # windows forwarded between two racing tests; 0: 1 on the CPU, batch_size on a GPU
    race_chunk: int = part(0, RIVAL, RACE, legacy=1)
    proxies: bool = False  # record the recon and overlap proxies of every candidate
    proxy_gate: bool = part(False, RIVAL)  # skip the forward when recon exceeds that of every member raced against...
    # ...times this margin: near-ties in recon say nothing about perplexity
    proxy_gate_margin: float = part(1.05, RIVAL, GATE, legacy=1.0)
    proxy_gate_rows: int = part(8, GATE, legacy=1)  # first estimate recon on 1 row in this many; 1: exact recon only
    successive_halving: bool = False  # generational: offspring on few windows, the better half on more
    halving_min_windows: int = 2
    max_seconds: float = 0.0  # wall-clock budget of one invocation (0: none)
    # evaluation
    n_jobs: int = 1
    hall_of_fame: int = 10
    test_top_k: int = 3  # hall-of-fame entries whose WikiText-2 test perplexity is measured at the end
    test_windows: int = 16
    test_seqlen: int = 512

    def validate(self) -> "SearchConfig":
        try:
            resolve_sparsity(self.sparsity, self.structure)
        except MaskError as err:
            raise ConfigError(str(err)) from None
        try:
            check_allocation(self.allocation, parse_structure(self.structure))
        except MaskError as err:
            raise ConfigError(str(err)) from None
        if self.fitness not in FITNESS_LOSSES:
            raise ConfigError(f"fitness must be one of {', '.join(FITNESS_LOSSES)}, got {self.fitness!r}")
        if self.mode not in ("steady", "generational"):
            raise ConfigError(f"mode must be 'steady' or 'generational', got {self.mode!r}")
        if self.race_against not in ("top_k", "worst"):
            raise ConfigError(f"race_against must be 'top_k' or 'worst', got {self.race_against!r}")
        if self.proxy_gate_margin < 1:
            raise ConfigError(f"proxy_gate_margin must be ≥ 1 (a gate below the rivals' own recon skips members "
                              f"as good as them), got {self.proxy_gate_margin}")
        if self.dtype and self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)} (or empty for the device's default), "
                              f"got {self.dtype!r}")
        if self.mask_fingerprint and self.mask_fingerprint not in SCHEMES:
            raise ConfigError(f"mask_fingerprint must be one of {', '.join(SCHEMES)}, got {self.mask_fingerprint!r}")
        if self.race_chunk < 0:
            raise ConfigError(f"race_chunk must be ≥ 0 (0: settled from the device), got {self.race_chunk}")
        if self.grad_norm not in ("l1", "l2"):
            raise ConfigError(f"grad_norm must be 'l1' or 'l2', got {self.grad_norm!r}")
        positive = ("population_size", "nsamples", "calib_seqlen", "fitness_windows", "fitness_seqlen",
                    "batch_size", "max_height", "top_k", "tournament_size", "offspring", "max_regenerate",
                    "race_min_windows", "halving_min_windows", "proxy_gate_rows")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be ≥ 1, got {getattr(self, key)}")
        for key in ("iterations", "hall_of_fame", "test_top_k", "test_windows", "max_seconds", "race_z"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be ≥ 0, got {getattr(self, key)}")
        for key in ("crossover_prob", "mutation_prob", "subtree_mutation"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if not 1 <= self.init_min_height <= self.init_max_height <= self.max_height:
            raise ConfigError("need 1 ≤ init_min_height ≤ init_max_height ≤ max_height")
        if self.n_jobs == 0:
            raise ConfigError("n_jobs must be ≥ 1 or negative (joblib's convention), not 0")
        return self

    def settled(self) -> "SearchConfig":
        """The config with its device-dependent defaults filled in, as a new run saves it; raises
        ``ConfigError`` when the device is not usable here (before any model is loaded)."""
        try:
            device = resolve_device(self.device)
        except DeviceError as err:
            raise ConfigError(str(err)) from None
        on_cpu = device == "cpu"
        return dataclasses.replace(self, dtype=self.dtype or dtype_name(resolve_dtype("", device)),
                                   mask_fingerprint=self.mask_fingerprint or default_scheme(on_cpu),
                                   race_chunk=self.race_chunk or (1 if on_cpu else self.batch_size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def keys_playing(part_name: str) -> tuple[str, ...]:
    """The config keys that play ``part_name`` (one of PARTS), in field order."""
    return tuple(f.name for f in dataclasses.fields(SearchConfig) if part_name in f.metadata.get("parts", ()))


PROBLEM_KEYS, RIVAL_KEYS, RACE_KEYS, GATE_KEYS, COMPARED_KEYS = (keys_playing(p) for p in PARTS)
# A run saved before a key existed behaved as its declared ``legacy`` value says, else as today's default (a
# key added without one, such as ``device``, kept the old behaviour by default).
LEGACY_DEFAULTS = {**SearchConfig().to_dict(),
                   **{f.name: f.metadata["legacy"] for f in dataclasses.fields(SearchConfig) if "legacy" in f.metadata}}

FIELDS = {f.name: f for f in dataclasses.fields(SearchConfig)}
TYPES = typing.get_type_hints(SearchConfig)


def _coerce(key: str, value):
    """Check ``value`` against the field's type (ints are accepted for floats)."""
    if key not in FIELDS:
        raise ConfigError(f"unknown config key {key!r}")
    kind = TYPES[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(kind) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        return value
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _flatten(doc: dict, table: str = "", places: dict | None = None) -> dict:
    """Tables are only grouping: their keys are read flat, and a key set in two places is an error."""
    flat, places = {}, {} if places is None else places
    for key, value in doc.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{table}.{key}" if table else key, places))
            continue
        here = f"[{table}]" if table else "the top level"
        if key in places:
            raise ConfigError(f"{key} is set twice: under {places[key]} and under {here}")
        places[key] = here
        flat[key] = value
    return flat


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` → (key, value); the value is read as TOML, else kept as a plain string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> SearchConfig:
    """Defaults ← ``base`` (a saved run's config) ← TOML file ← ``key=value`` overrides, validated."""
    values = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values.update(_flatten(tomllib.loads(path.read_text())))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: {err}") from None
        values.setdefault("name", path.stem)
    values.update(parse_override(o) for o in overrides)
    return SearchConfig(**{k: _coerce(k, v) for k, v in values.items()}).validate()
