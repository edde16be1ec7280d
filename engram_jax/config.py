"""Configuration schema shared by every config file under configs/.

Each file in configs/ defines `get_config()` and starts from `base_config()`,
so every run has the same fields with the same units. Derived shapes (model
width, head count, Engram row width) are computed here from those fields.
"""

import math

import ml_collections

# Engram capacity presets: (vocab_per_ngram, n_embed_per_ngram). The table of a
# layer has about 16 * vocab_per_ngram rows of n_embed_per_ngram / 8 floats.
ENGRAM_PRESETS = {
    "tiny": (5_000, 64),
    "small": (20_000, 128),
    "medium": (50_000, 128),
    "large": (50_000, 256),
    "xlarge": (100_000, 256),
}

# The reference tokenizer's special tokens, placed after the ordinary ids in
# this order. Only <|bos|> is used in pretraining.
SPECIAL_TOKENS = (
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
)


def base_config() -> ml_collections.ConfigDict:
  """Return the full schema with the reference (d8, small Engram) defaults."""
  cfg = ml_collections.ConfigDict()
  cfg.name = "d8"  # run tag used in logs and the default workdir name

  cfg.model = ml_collections.ConfigDict()
  cfg.model.depth = 8  # number of transformer blocks L
  cfg.model.aspect_ratio = 64  # width = ceil(depth * aspect / head_dim) * head_dim
  cfg.model.head_dim = 64  # channels per attention head
  cfg.model.sequence_len = 1024  # tokens per training row T
  cfg.model.vocab_size = 32_768  # raw BPE vocabulary V, specials included
  cfg.model.rope_base = 100_000.0  # rotary frequency base
  cfg.model.rope_len_factor = 10  # rotary tables cover factor * T positions
  cfg.model.logit_softcap = 15.0  # logits -> cap * tanh(logits / cap), in fp32
  cfg.model.qk_scale = 1.2  # multiplier on q and k after their RMSNorm
  cfg.model.smear_channels = 24  # input channels of the smear gate
  cfg.model.ve_gate_channels = 12  # input channels of the value-embedding gate
  cfg.model.compute_dtype = "float32"  # activations and matmuls: float32 or bfloat16
  cfg.model.param_dtype = "float32"  # master weights (fp32 always in this project)

  cfg.engram = ml_collections.ConfigDict()
  cfg.engram.enabled = True  # False builds the no-Engram control
  cfg.engram.preset = "small"  # one of ENGRAM_PRESETS, or "custom"
  cfg.engram.vocab_per_ngram = 20_000  # smallest prime per hash head (set by preset)
  cfg.engram.n_embed_per_ngram = 128  # width of one order's 8 heads (set by preset)
  cfg.engram.layer_ids = (2, 5)  # 0-based blocks that carry an Engram layer
  cfg.engram.max_ngram = 3  # largest n-gram order N; orders 2..N are hashed
  cfg.engram.heads_per_ngram = 8  # hash heads K per order
  cfg.engram.kernel_size = 4  # taps of the causal depthwise conv
  cfg.engram.seed = 0  # multiplier seed; layer l uses seed + 10007 * l
  cfg.engram.reference_pad = False  # True: pad id 0 as the reference (collides with byte 0x00)
  cfg.engram.table_shards = 1  # table rows are padded to a multiple of this

  cfg.tokenizer = ml_collections.ConfigDict()
  cfg.tokenizer.path = ""  # directory with tokenizer files; empty = <workdir>/tokenizer
  cfg.tokenizer.train_chars = 200_000_000  # characters sampled to train the BPE
  cfg.tokenizer.doc_cap_chars = 10_000  # each training document is cut to this length

  cfg.data = ml_collections.ConfigDict()
  cfg.data.source = "embedded"  # "embedded" (packaged prose + synthetic), "files" or "hub"
  cfg.data.paths = ()  # with source="files": .txt, .jsonl or .parquet files or directories
  cfg.data.hub_repo = "karpathy/climbmix-400b-shuffle"  # with source="hub": dataset repo id
  cfg.data.hub_shards = (0, 1)  # with source="hub": train shard indices to download
  cfg.data.hub_val_shard = 6542  # with source="hub": the shard used for validation
  cfg.data.dir = ""  # token shards; empty = <workdir>/data
  cfg.data.val_permille = 20  # documents whose content hash falls in this many per mille go to val
  cfg.data.synthetic_users = 2_000  # synthetic persona documents mixed into the embedded source
  cfg.data.synthetic_seed = 0  # persona generator seed (evaluation users use another stream)
  cfg.data.shuffle_seed = 1234  # order of packed rows in each epoch

  cfg.optim = ml_collections.ConfigDict()
  cfg.optim.embedding_lr = 0.3  # AdamW lr of wte, before the width scale (d / 768)^-0.5
  cfg.optim.unembedding_lr = 0.008  # AdamW lr of lm_head, before the width scale
  cfg.optim.matrix_lr = 0.02  # Muon lr of block matrices and Engram W_K, W_V
  cfg.optim.scalar_lr = 0.5  # AdamW lr of x0_lambdas (resid_lambdas get 0.01x)
  cfg.optim.smear_lr = 0.2  # AdamW lr of smear gate, smear and backout lambdas
  cfg.optim.engram_table_lr_mult = 5.0  # Engram tables: this times the scaled embedding lr
  cfg.optim.weight_decay = 0.05  # Muon (cautious) weight decay
  cfg.optim.adam_eps = 1e-10  # AdamW epsilon
  cfg.optim.muon_momentum = 0.95  # Muon Nesterov momentum
  cfg.optim.muon_beta2 = 0.9  # NorMuon second-moment decay
  cfg.optim.muon_ns_steps = 5  # Polar Express iterations
  cfg.optim.warmup_steps = 20  # linear lr warmup, in optimiser steps
  cfg.optim.warmdown_frac = 0.5  # fraction of steps with linear decay at the end
  cfg.optim.final_lr_frac = 0.05  # lr multiplier reached at the last step

  cfg.mesh = ml_collections.ConfigDict()
  cfg.mesh.data = -1  # data-parallel axis size; -1 takes the devices left over
  cfg.mesh.fsdp = 1  # parameter-sharding axis size for the dense weights
  cfg.mesh.table = 1  # Engram table rows are sharded over this many devices

  cfg.train = ml_collections.ConfigDict()
  cfg.train.total_batch_tokens = 131_072  # tokens per optimiser step
  cfg.train.device_batch_size = 8  # rows per micro-step (all devices together)
  cfg.train.num_iterations = 4_000  # optimiser steps
  cfg.train.seed = 42  # parameter init
  cfg.train.log_every = 10  # steps between progress lines
  cfg.train.eval_every = 500  # steps between validation bpb measurements (and at the end)
  cfg.train.eval_tokens = 524_288  # validation tokens per measurement
  cfg.train.checkpoint_every = 500  # steps between checkpoints (and at the end)
  cfg.train.max_to_keep = 3  # checkpoints kept on disk
  cfg.train.sample_every = 500  # steps between short greedy samples; 0 disables
  cfg.train.sample_tokens = 32  # tokens per greedy sample
  cfg.train.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = guess from the device kind
  return cfg


def apply_preset(cfg: ml_collections.ConfigDict, preset: str) -> None:
  """Set the Engram table sizes of `cfg` from a named capacity preset."""
  if preset not in ENGRAM_PRESETS:
    raise ValueError(
        f"Unknown Engram preset {preset!r}; choose one of "
        f"{sorted(ENGRAM_PRESETS)} or set engram.preset='custom'."
    )
  cfg.engram.preset = preset
  cfg.engram.vocab_per_ngram, cfg.engram.n_embed_per_ngram = ENGRAM_PRESETS[preset]


def model_width(model_cfg) -> int:
  """Width d = ceil(depth * aspect / head_dim) * head_dim."""
  return math.ceil(model_cfg.depth * model_cfg.aspect_ratio / model_cfg.head_dim) * model_cfg.head_dim


def num_heads(model_cfg) -> int:
  return model_width(model_cfg) // model_cfg.head_dim


def padded_vocab_size(model_cfg, multiple: int = 64) -> int:
  """Vocabulary rounded up to a multiple of 64 for the embedding tables."""
  return -(-model_cfg.vocab_size // multiple) * multiple


def hash_heads(engram_cfg) -> int:
  """Hash heads per Engram layer, G = (N - 1) * K."""
  return (engram_cfg.max_ngram - 1) * engram_cfg.heads_per_ngram


def row_width(engram_cfg) -> int:
  """Floats per table row, W = n_embed_per_ngram / K."""
  if engram_cfg.n_embed_per_ngram % engram_cfg.heads_per_ngram:
    raise ValueError(
        f"engram.n_embed_per_ngram={engram_cfg.n_embed_per_ngram} must be divisible "
        f"by engram.heads_per_ngram={engram_cfg.heads_per_ngram}."
    )
  return engram_cfg.n_embed_per_ngram // engram_cfg.heads_per_ngram


def memory_width(engram_cfg) -> int:
  """Width of one position's concatenated rows, E = G * W."""
  return hash_heads(engram_cfg) * row_width(engram_cfg)


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raise ValueError naming the field when `cfg` cannot build a model."""
  m, e = cfg.model, cfg.engram
  if m.depth < 1:
    raise ValueError(f"model.depth={m.depth} must be at least 1.")
  if m.compute_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"model.compute_dtype={m.compute_dtype!r}; use 'float32' or 'bfloat16'.")
  if m.param_dtype != "float32":
    raise ValueError(f"model.param_dtype={m.param_dtype!r}; master weights must be 'float32'.")
  if num_heads(m) * m.head_dim != model_width(m):
    raise ValueError("model width must be a multiple of model.head_dim.")
  if m.smear_channels > model_width(m) or m.ve_gate_channels > model_width(m):
    raise ValueError("model.smear_channels and model.ve_gate_channels must not exceed the width.")
  if not e.enabled:
    return
  if e.preset != "custom" and (e.vocab_per_ngram, e.n_embed_per_ngram) != ENGRAM_PRESETS.get(e.preset):
    raise ValueError(
        f"engram.preset={e.preset!r} does not match vocab_per_ngram={e.vocab_per_ngram}, "
        f"n_embed_per_ngram={e.n_embed_per_ngram}; call apply_preset() or set engram.preset='custom'."
    )
  layer_ids = tuple(e.layer_ids)
  if not layer_ids:
    raise ValueError("engram.layer_ids is empty; set engram.enabled=False for the no-Engram control.")
  if len(set(layer_ids)) != len(layer_ids) or any(not 0 <= i < m.depth for i in layer_ids):
    raise ValueError(
        f"engram.layer_ids={layer_ids} must be distinct block indices in [0, {m.depth})."
    )
  if e.max_ngram < 2:
    raise ValueError(f"engram.max_ngram={e.max_ngram} must be at least 2.")
  if e.table_shards < 1:
    raise ValueError(f"engram.table_shards={e.table_shards} must be at least 1.")
  table_axis = cfg.get("mesh", {}).get("table", 1)
  if table_axis > 1 and e.table_shards % table_axis:
    raise ValueError(
        f"mesh.table={table_axis} shards the Engram rows, but engram.table_shards={e.table_shards} "
        f"does not pad the tables to a multiple of it; set --config.engram.table_shards={table_axis}.")
  row_width(e)
