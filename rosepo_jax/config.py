"""Typed, validated configuration: `parse(configdict)` -> `Config`.

Config files stay Python files returning an `ml_collections.ConfigDict` (`--config.a.b=` overrides
work as usual); the runner turns it into a `Config` of frozen dataclasses once, before any stage
runs. Parsing rejects unknown keys (never drops them), checks every value's type and the ranges in
`RANGES`, and raises `ConfigError` naming the dotted key, the value and what is allowed.

Sections: data, prompt, tokenizer, model, mesh, vocab_chunk, methods, seeds, sft, oracle, smoothing,
negatives, preference, eval, export, report, compile. `smoothing` is the one home of the smoothing factor's
settings (METHOD.md section 4) and of cDPO's constant eps, so that changing them re-scores the
preference pairs without retraining the oracle.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from rosepo_jax import methods as methods_lib
from rosepo_jax.errors import InputError
from rosepo_jax import model as model_lib
from rosepo_jax import negatives as negatives_lib
from rosepo_jax import oracle as oracle_lib
from rosepo_jax import train
from rosepo_jax.data import prompts, synthetic


class ConfigError(InputError, ValueError):
  """A config value that is missing, unknown, of the wrong type or out of range."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  name: str = "synthetic"
  manual_dir: str = ""  # "": the dataset's default folder under ../shared/data
  seed: int = 0
  num_candidates: int = 20
  max_history: int = 10
  min_history: int = 3
  max_seq_len: int = 0  # 0: the longest row a stage will build (the data stage sizes it)
  candidates_dir: str = ""  # lastfm: S-DPO's frozen val/test candidates
  split_file: str = ""  # movielens100k: LLaRA's user split
  eval_rows_dir: str = ""  # movielens100k: LLaRA's eval rows
  world: synthetic.WorldConfig = synthetic.WorldConfig()  # synthetic only


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  domain: str = ""  # "": the dataset's default
  templates: tuple[str, ...] = ()
  title_format: str = "auto"  # comma | lines | auto (data.prompts)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  kind: str = "bpe"  # bpe (trained on the training prompts) | pretrained (the backbone's)
  vocab_size: int = 1024
  path: str = ""
  # Every catalogue title one token of its own (rosepo_jax/data/codec.py); False: titles as text.
  title_tokens: bool = False
  # Titles as text, each followed by its item's token (LLaRA's hybrid prompt slot; data/codec.py).
  item_slots: bool = False


@dataclasses.dataclass(frozen=True)
class ModelSection:
  init: str = "scratch"  # or a .gguf file, pkg:NAME, an HF folder or an orbax model dir
  preset: str = "tiny"
  seed: int = 0
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  lora_rank: int = 0
  lora_alpha: float = 16.0
  copy_init_layers: tuple[int, ...] = ()  # from scratch: layers that start as copy heads
  copy_init_gain: float = 1.0
  # "oracle": hybrid item embeddings (LLaRA): each title token's input embedding gains a learned
  # projection of the all-users SASRec oracle's item embedding (titles as tokens; no LoRA).
  item_embeddings: str = "none"
  overrides: dict = dataclasses.field(default_factory=dict)  # model.ModelConfig fields


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class TrainSection:
  """What every training stage reads: steps, batches, logging, checkpoints, the optimizer."""
  steps: int = 100
  batch_size: int = 16
  accum_steps: int = 1
  log_every: int = 10
  eval_every: int = 0
  checkpoint_every: int = 100
  keep_checkpoints: int = 2
  optim: train.OptimConfig = train.OptimConfig()

  def loop(self, best_metric: str = "") -> train.LoopConfig:
    return train.LoopConfig(num_steps=self.steps, log_every=self.log_every,
                            eval_every=self.eval_every, checkpoint_every=self.checkpoint_every,
                            keep_checkpoints=self.keep_checkpoints, best_metric=best_metric,
                            best_mode="min")


@dataclasses.dataclass(frozen=True)
class SFTConfig(TrainSection):
  eval_examples: int = 128
  candidate_curriculum: tuple[tuple[int, int], ...] = ()  # ((end_step, shown), ...)
  # > 0 (titles as tokens): SFT also predicts each history title from the prompt before it,
  # SASRec's next-item objective inside the LLM, each such token weighing this much against a
  # response token (stages/sft.py).
  history_loss_weight: float = 0.0
  # "best": the model SFT saves is the evaluated checkpoint of the lowest validation loss
  # (every evaluated step is checkpointed); "last": its last step.
  keep: str = "best"


@dataclasses.dataclass(frozen=True)
class PreferenceConfig(TrainSection):
  beta: float = 1.0
  sdpo_k: int = 3
  rosepo_form: str = "conservative"  # or robust (rdpo's form)
  sft_weight: float = 0.0
  max_prompts: int = 0  # > 0: a seeded draw of that many training prompts across users; 0: all
  reference: str = "precomputed"  # or online: the frozen SFT model runs in every step
  # METHOD.md section 3's mixture: a loss weight per strategy of the negatives stage's pairs
  # (strategy name or "hallucination" -> weight >= 0; absent: 1; 0 drops the strategy's pairs).
  strategy_weights: dict = dataclasses.field(default_factory=dict)
  # Where the negatives' and preference prompts come from: "train" (the training split, which SFT
  # trained on) or "held_out" (the training users SFT never saw: `held_out_share` of them, a
  # seeded draw, are left out of SFT), so that the pairs carry the SFT model's real mistakes.
  prompts: str = "train"
  held_out_share: float = 0.2


@dataclasses.dataclass(frozen=True)
class NegativesConfig:
  strategies: tuple[str, ...] = ("random", "self_hard", "semantic", "popularity")
  popularity_alpha: float = 1.0
  max_prompts: int = 0  # > 0: a seeded draw across users (data.candidates.subset_indices)
  max_new_tokens: int = 32
  batch_size: int = 32
  # What places titles for the semantic negatives: "sft" (METHOD.md's default: the SFT model's
  # input embeddings of the title's tokens) or "oracle" (the all-users SASRec item embeddings)
  semantic_embedding: str = "sft"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  split: str = "test"
  max_examples: int = 0  # > 0: a seeded draw across users; 0: the whole split
  batch_size: int = 32
  max_new_tokens: int = 32
  ranking: bool = True
  # How answers are decoded: "free" (METHOD.md section 6: greedy over the whole vocabulary, so an
  # answer may name no candidate) or "candidates" (greedy restricted to the prompt's candidate
  # titles, each followed by EOS: every answer is a candidate; beyond the paper).
  decoding: str = "free"


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  dtype: str = ""  # "": the parameters' dtype


@dataclasses.dataclass(frozen=True)
class ReportConfig:
  # More runs to compare every other run with (paired differences run - baseline), after rosepo
  # against every other run and every run against sft.
  baselines: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class CompileConfig:
  hbm_gib: float = 0.0  # 0: no budget check
  seq_len: int = 0  # 0: data.max_seq_len


@dataclasses.dataclass(frozen=True)
class Config:
  data: DataConfig = DataConfig()
  prompt: PromptConfig = PromptConfig()
  tokenizer: TokenizerConfig = TokenizerConfig()
  model: ModelSection = ModelSection()
  mesh: MeshConfig = MeshConfig()
  vocab_chunk: int = 8192
  methods: tuple[str, ...] = ("sft", "dpo")
  # Seeds of the model-dependent units (sft, negatives, dpo, eval, export), each run once per
  # seed over the shared data and oracle: model.seed and the batch order. (): one run, model.seed.
  seeds: tuple[int, ...] = ()
  sft: SFTConfig = SFTConfig()
  oracle: oracle_lib.OracleConfig = oracle_lib.OracleConfig()
  smoothing: oracle_lib.SmoothingConfig = oracle_lib.SmoothingConfig()
  negatives: NegativesConfig = NegativesConfig()
  preference: PreferenceConfig = PreferenceConfig()
  eval: EvalConfig = EvalConfig()
  export: ExportConfig = ExportConfig()
  report: ReportConfig = ReportConfig()
  compile: CompileConfig = CompileConfig()

  @property
  def trained_runs(self) -> tuple[str, ...]:
    """The preference methods of `methods` (every run but sft)."""
    return tuple(m for m in self.methods if m != "sft")

  def method(self, name: str) -> methods_lib.Method:
    return methods_lib.get(name)

  def uses_negatives(self, run: str) -> bool:
    return run != "sft" and methods_lib.uses_negatives(self.method(run), self.smoothing.cdpo_eps)

  def for_seed(self, seed: int | None) -> "Config":
    """This config for the runs of `seed` (model.seed = seed); unchanged for None."""
    if seed is None:
      return self
    return dataclasses.replace(self, model=dataclasses.replace(self.model, seed=seed))

  @property
  def run_seeds(self) -> tuple[int | None, ...]:
    """The seeds the model-dependent units run for: `seeds`, or (None,) for one run."""
    return self.seeds or (None,)

  def num_rejected(self, run: str) -> int:
    return methods_lib.num_rejected(self.method(run), self.preference.sdpo_k,
                                    self.negatives.strategies)


# ------------------------------------------------------------------------------------------------
# Ranges and allowed values, by dotted key. (low, high): inclusive bounds, None = unbounded;
# ">0" style strings for strict bounds; a tuple of values = the allowed choices.

def _positive(x):
  return x > 0


def _non_negative(x):
  return x >= 0


def _probability_below_half(x):
  return 0 <= x < 0.5


RANGES: dict[str, tuple[Any, str]] = {
    "data.name": (("lastfm", "movielens100k", "generic", "synthetic"), ""),
    "data.num_candidates": (lambda x: x >= 2, ">= 2"),
    "data.min_history": (lambda x: x >= 1, ">= 1"),
    "data.max_history": (_positive, "> 0"),
    "data.max_seq_len": (_non_negative, ">= 0 (0: sized from the data)"),
    "prompt.title_format": (("auto", "comma", "lines"), ""),
    "prompt.domain": (("",) + tuple(prompts.DEFAULT_TEMPLATES), ""),
    "*.seed": (_non_negative, ">= 0"),
    "model.copy_init_gain": (_positive, "> 0"),
    "*.optim.b1": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "*.optim.b2": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "*.optim.eps": (_positive, "> 0"),
    "tokenizer.kind": (("bpe", "pretrained"), ""),
    "tokenizer.vocab_size": (_non_negative, ">= 0"),
    "model.dtype": (("float32", "bfloat16", "float16"), ""),
    "model.param_dtype": (("float32", "bfloat16", "float16"), ""),
    "model.lora_rank": (_non_negative, ">= 0"),
    "model.item_embeddings": (("none", "oracle"), ""),
    "negatives.semantic_embedding": (("sft", "oracle"), ""),
    "eval.decoding": (("free", "candidates"), ""),
    "model.lora_alpha": (_positive, "> 0"),
    "mesh.data": (lambda x: x == -1 or x >= 1, "-1 (all remaining devices) or >= 1"),
    "mesh.fsdp": (lambda x: x == -1 or x >= 1, "-1 (all remaining devices) or >= 1"),
    "mesh.tensor": (lambda x: x == -1 or x >= 1, "-1 (all remaining devices) or >= 1"),
    "vocab_chunk": (_positive, "> 0"),
    "*.steps": (_non_negative, ">= 0"),
    "*.batch_size": (_positive, "> 0"),
    "*.accum_steps": (_positive, "> 0"),
    "*.log_every": (_positive, "> 0"),
    "*.eval_every": (_non_negative, ">= 0"),
    "*.checkpoint_every": (_positive, "> 0"),
    "*.keep_checkpoints": (_positive, "> 0"),
    "*.max_prompts": (_non_negative, ">= 0"),
    "*.max_new_tokens": (_positive, "> 0"),
    "*.optim.learning_rate": (_positive, "> 0"),
    "*.optim.warmup_steps": (_non_negative, ">= 0"),
    "*.optim.decay": (("cosine", "linear", "constant"), ""),
    "*.optim.min_lr_ratio": (lambda x: 0 <= x <= 1, "in [0, 1]"),
    "*.optim.weight_decay": (_non_negative, ">= 0"),
    "*.optim.max_grad_norm": (_non_negative, ">= 0 (0: no clipping)"),
    "sft.eval_examples": (_non_negative, ">= 0"),
    "sft.history_loss_weight": (_non_negative, ">= 0"),
    "sft.keep": (("best", "last"), ""),
    "oracle.dim": (_positive, "> 0"),
    "oracle.num_blocks": (_positive, "> 0"),
    "oracle.num_heads": (_positive, "> 0"),
    "oracle.dropout": (lambda x: 0 <= x < 1, "in [0, 1)"),
    "oracle.max_len": (_positive, "> 0"),
    "oracle.learning_rate": (_positive, "> 0"),
    "oracle.max_epochs": (_positive, "> 0"),
    "oracle.patience": (_positive, "> 0"),
    "oracle.folds": (_positive, ">= 1 (1: one oracle scores every pair, no cross-fitting)"),
    "smoothing.lam": (lambda x: 0 <= x <= 1, "in [0, 1]"),
    "smoothing.tau": (_positive, "> 0"),
    "smoothing.eps_min": (_probability_below_half, "in [0, 0.5)"),
    "smoothing.eps_max": (_probability_below_half, "in [0, 0.5)"),
    "smoothing.semantic_eps": (_probability_below_half, "in [0, 0.5)"),
    "smoothing.cdpo_eps": (lambda x: x < 0.5, "< 0.5 (< 0: the mean oracle eps of the pairs)"),
    "negatives.popularity_alpha": (_non_negative, ">= 0"),
    "preference.beta": (_positive, "> 0"),
    "preference.sdpo_k": (_positive, "> 0"),
    "preference.rosepo_form": (("conservative", "robust"), ""),
    "preference.sft_weight": (_non_negative, ">= 0"),
    "preference.reference": (("precomputed", "online"), ""),
    "preference.prompts": (("train", "held_out"), ""),
    "preference.held_out_share": (lambda x: 0 < x < 1, "in (0, 1)"),
    "eval.split": (("train", "val", "test"), ""),
    "eval.max_examples": (_non_negative, ">= 0"),
    "export.dtype": (("", "float32", "bfloat16", "float16"), ""),
    "compile.hbm_gib": (_non_negative, ">= 0"),
    "compile.seq_len": (_non_negative, ">= 0"),
}

# Keys that moved: a config written for an older layout gets told where.
MOVED = {"oracle.lam": "smoothing.lam", "oracle.tau": "smoothing.tau",
         "oracle.eps_min": "smoothing.eps_min", "oracle.eps_max": "smoothing.eps_max",
         "negatives.semantic_eps": "smoothing.semantic_eps",
         "preference.cdpo_eps": "smoothing.cdpo_eps"}


# Entries of the run folder that belong to other units (rosepo_jax/workdir.py): no method may
# be named after one, since a method's outputs live in DIR/<method>.
RESERVED_RUN_NAMES = frozenset({"data", "oracle", "preference", "eval", "export", "stages",
                                "plots", "report.md"})


def _rule(key: str):
  if key in RANGES:
    return RANGES[key]
  parts = key.split(".")
  for start in range(1, len(parts)):
    wildcard = "*." + ".".join(parts[start:])
    if wildcard in RANGES:
      return RANGES[wildcard]
  return None


def _check_range(key: str, value) -> None:
  rule = _rule(key)
  if rule is None:
    return
  allowed, text = rule
  if isinstance(allowed, tuple):
    if value not in allowed:
      raise ConfigError(f"config.{key}={value!r}: expected one of {list(allowed)}")
  elif not allowed(value):
    raise ConfigError(f"config.{key}={value!r}: expected {text}")


def _is_mapping(node) -> bool:
  return hasattr(node, "keys") and hasattr(node, "__getitem__")


def _convert(key: str, hint, value):
  """`value` as type `hint`, or a ConfigError naming `key`."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  wrong = lambda what: ConfigError(  # pylint: disable=unnecessary-lambda-assignment
      f"config.{key}={value!r}: expected {what}, got {type(value).__name__}")
  if dataclasses.is_dataclass(hint):
    if not _is_mapping(value):
      raise wrong("a section (a dict of fields)")
    return _build(hint, value, key)
  if hint is bool:
    if not isinstance(value, bool):
      raise wrong("true or false")
    return value
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, int):
      if isinstance(value, float) and value.is_integer():
        return int(value)
      raise wrong("an integer")
    return value
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise wrong("a finite number")
    return float(value)
  if hint is str:
    if not isinstance(value, str):
      raise wrong("a string")
    return value
  if hint is dict or origin is dict:
    if not _is_mapping(value):
      raise wrong("a dict")
    return dict(value.to_dict() if hasattr(value, "to_dict") else value)
  if origin is tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
      raise wrong("a tuple")
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_convert(f"{key}[{i}]", args[0], v) for i, v in enumerate(value))
    if len(value) != len(args):
      raise ConfigError(f"config.{key}={value!r}: expected {len(args)} values")
    return tuple(_convert(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
  if origin in (types.UnionType, typing.Union):
    raise TypeError(f"config.{key}: union types are not supported in config sections")
  raise TypeError(f"config.{key}: unsupported field type {hint!r}")


def _build(cls, node, path: str = ""):
  """An instance of dataclass `cls` from a mapping: every key known, typed and in range."""
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  prefix = f"{path}." if path else ""
  for key in node.keys():
    if key not in fields:
      dotted = prefix + key
      hint = f"; it moved to config.{MOVED[dotted]}" if dotted in MOVED else ""
      raise ConfigError(f"config.{dotted}: unknown key{hint}; {'config.' + path if path else 'config'} "
                        f"takes {sorted(fields)}")
  values = {}
  for name, f in fields.items():
    if name not in node.keys():
      continue  # the dataclass default
    key = prefix + name
    value = _convert(key, hints[name], node[name])
    if not dataclasses.is_dataclass(hints[name]):
      _check_range(key, value)
    values[name] = value
  try:
    return cls(**values)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{path or '(top level)'}: {e}") from None


def _check_consistency(c: Config) -> None:
  """Checks that span several keys."""
  if c.data.min_history > c.data.max_history:
    raise ConfigError(f"config.data.min_history={c.data.min_history} > config.data.max_history="
                      f"{c.data.max_history}: expected min_history <= max_history")
  if c.smoothing.eps_min > c.smoothing.eps_max:
    raise ConfigError(f"config.smoothing.eps_min={c.smoothing.eps_min} > config.smoothing.eps_max"
                      f"={c.smoothing.eps_max}")
  if c.oracle.max_len < c.data.max_history:
    raise ConfigError(f"config.oracle.max_len={c.oracle.max_len}: expected >= "
                      f"config.data.max_history={c.data.max_history}")
  if not c.methods:
    raise ConfigError("config.methods=(): expected at least one run (sft and/or a method)")
  for i, m in enumerate(c.methods):
    if m != "sft" and m not in methods_lib.METHODS:
      raise ConfigError(f"config.methods[{i}]={m!r}: unknown method; expected sft or one of "
                        f"{sorted(methods_lib.METHODS)}")
  for i, b in enumerate(c.report.baselines):
    if b not in c.methods:
      raise ConfigError(f"config.report.baselines[{i}]={b!r}: not a run of config.methods="
                        f"{c.methods}")
  if len(set(c.methods)) != len(c.methods):
    raise ConfigError(f"config.methods={c.methods}: a run is named twice")
  if len(set(c.seeds)) != len(c.seeds) or any(s < 0 for s in c.seeds):
    raise ConfigError(f"config.seeds={c.seeds}: expected distinct seeds >= 0 (or () for one run)")
  for i, m in enumerate(c.methods):
    if m in RESERVED_RUN_NAMES:  # DIR/<method> would collide with another unit's folder
      raise ConfigError(f"config.methods[{i}]={m!r}: the name of a run folder's entry; a method "
                        f"may not be named any of {sorted(RESERVED_RUN_NAMES)}")
  known = list(negatives_lib.STRATEGIES) + [negatives_lib.HALLUCINATION]
  for name, weight in c.preference.strategy_weights.items():
    if name not in known:
      raise ConfigError(f"config.preference.strategy_weights.{name}: unknown strategy; expected "
                        f"some of {known}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
      raise ConfigError(f"config.preference.strategy_weights.{name}={weight!r}: expected a "
                        "number >= 0")
  for i, s in enumerate(c.negatives.strategies):
    if s not in negatives_lib.STRATEGIES:
      raise ConfigError(f"config.negatives.strategies[{i}]={s!r}: expected one of "
                        f"{list(negatives_lib.STRATEGIES)}")
  if c.model.copy_init_layers and c.model.init != "scratch":
    raise ConfigError(f"config.model.copy_init_layers={c.model.copy_init_layers} applies only to "
                      f"a model trained from scratch, not to config.model.init={c.model.init!r}")
  model_fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  for key in c.model.overrides:
    if key not in model_fields:
      raise ConfigError(f"config.model.overrides.{key}: unknown model field; expected some of "
                        f"{sorted(model_fields)}")
  if c.model.init == "scratch" and c.model.preset not in model_lib.PRESETS:
    raise ConfigError(f"config.model.preset={c.model.preset!r}: expected one of "
                      f"{sorted(model_lib.PRESETS)}")
  _check_needs_no_data(c)
  last = 0
  for i, (end, shown) in enumerate(c.sft.candidate_curriculum):
    if end <= last or not 1 <= shown < c.data.num_candidates:
      raise ConfigError(
          f"config.sft.candidate_curriculum[{i}]=({end}, {shown}): expected (end_step, shown) "
          f"pairs with increasing end steps > 0 and 1 <= shown < {c.data.num_candidates}")
    last = end


def _check_needs_no_data(c: Config) -> None:
  """The rules a stage would otherwise find only when it runs: the world, the templates, the
  tokenizer, the model's shapes, the batches, the strategies each method trains on."""
  problem = synthetic.world_problem(c.data.world) if c.data.name == "synthetic" else ""
  if problem:
    raise ConfigError(f"config.data.world.{problem}")
  for i, template in enumerate(c.prompt.templates):
    problem = prompts.template_problem(template)
    if problem:
      raise ConfigError(f"config.prompt.templates[{i}]={template[:60]!r}: {problem}")
  if c.tokenizer.title_tokens and c.tokenizer.item_slots:
    raise ConfigError("config.tokenizer.item_slots=True follows each title's text with its "
                      "item's token; with config.tokenizer.title_tokens=True there is no text")
  if c.model.item_embeddings == "oracle" and not (c.tokenizer.title_tokens
                                                  or c.tokenizer.item_slots):
    raise ConfigError(
        "config.model.item_embeddings='oracle' needs a token per item to add the embedding to: "
        "config.tokenizer.title_tokens=True or config.tokenizer.item_slots=True")
  if c.sft.history_loss_weight and not c.tokenizer.title_tokens:
    raise ConfigError(f"config.sft.history_loss_weight={c.sft.history_loss_weight} needs "
                      "config.tokenizer.title_tokens=True (a history title is then one token)")
  if c.tokenizer.kind == "pretrained" and not c.tokenizer.path:
    raise ConfigError("config.tokenizer.path='': tokenizer.kind='pretrained' needs the folder or "
                      ".gguf file (or pkg:NAME) of the backbone's tokenizer")
  if c.model.init == "scratch":
    try:
      cfg = model_lib.get_config(c.model.preset, vocab_size=64, **c.model.overrides)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.model.overrides={c.model.overrides}: {e}") from None
    for layer in c.model.copy_init_layers:
      if not -cfg.num_layers <= layer < cfg.num_layers:
        raise ConfigError(f"config.model.copy_init_layers={c.model.copy_init_layers}: layer "
                          f"{layer} is out of range for a {cfg.num_layers}-layer model (expected "
                          f"{-cfg.num_layers}..{cfg.num_layers - 1})")
  if c.oracle.dim % c.oracle.num_heads:
    raise ConfigError(f"config.oracle.dim={c.oracle.dim}: expected a multiple of "
                      f"config.oracle.num_heads={c.oracle.num_heads}")
  for name in ("sft", "preference"):
    section = getattr(c, name)
    if section.batch_size % section.accum_steps:
      raise ConfigError(f"config.{name}.batch_size={section.batch_size}: expected a multiple of "
                        f"config.{name}.accum_steps={section.accum_steps} (each accumulation "
                        "step takes an equal share of the batch)")
  weights = c.preference.strategy_weights
  for i, run in enumerate(c.methods):
    if run == "sft":
      continue
    method = methods_lib.get(run)
    kept = [s for s in c.negatives.strategies if s not in method.dropped]
    if method.pairs == "negatives":
      if "semantic" in kept and negatives_lib.HALLUCINATION not in method.dropped:
        kept.append(negatives_lib.HALLUCINATION)
      if not kept:
        raise ConfigError(f"config.methods[{i}]={run!r} drops every strategy of "
                          f"config.negatives.strategies={c.negatives.strategies}: no pairs left")
      if not any(float(weights.get(s, 1.0)) > 0 for s in kept):
        raise ConfigError(f"config.preference.strategy_weights={weights}: every strategy "
                          f"{run!r} trains on ({kept}) has weight 0, so its loss would be 0; "
                          "give one a weight > 0")
    if method.eps == "world" and c.data.name != "synthetic":
      raise ConfigError(f"config.methods[{i}]={run!r} takes each pair's eps from the synthetic "
                        "world's true probabilities; config.data.name="
                        f"{c.data.name!r} has none (expected 'synthetic')")
    if method.eps == "constant" and c.smoothing.cdpo_eps < 0 and not any(
        negatives_lib.scored_by_oracle(s) for s in c.negatives.strategies):
      raise ConfigError(f"config.smoothing.cdpo_eps={c.smoothing.cdpo_eps} asks {run!r} for the "
                        "mean oracle eps of the pairs, but config.negatives.strategies="
                        f"{c.negatives.strategies} makes no pair the oracle scores; set "
                        "config.smoothing.cdpo_eps >= 0")


def parse(node) -> Config:
  """The typed, validated `Config` of a ConfigDict (or dict); a `Config` is returned as is."""
  if isinstance(node, Config):
    return node
  if not _is_mapping(node):
    raise ConfigError(f"config: expected a ConfigDict or dict, got {type(node).__name__}")
  config = _build(Config, node)
  _check_consistency(config)
  return config


def section_value(config: Config, dotted: str):
  """A JSON-able value of `dotted` (a section or a field: "model.lora_rank") for unit keys."""
  node: Any = config
  for part in dotted.split("."):
    node = getattr(node, part)
  return dataclasses.asdict(node) if dataclasses.is_dataclass(node) else node
