"""Joint OPT speed: our compiled schedule against the reference schedule, per fact.

  python -m benchmarks.joint_opt_speed [--vocab_size=2048] [--reference_steps=1500]
  python -m benchmarks.joint_opt_speed --checkpoint_dir=WORKDIR

Without --checkpoint_dir it needs no prior run: it trains a BPE tokenizer on
generated persona documents, builds a freshly initialised tiny model and
writes the facts of the first generated user with at least --min_facts facts.

Both methods manage the same rows and train the same fact loss
(cross-entropy over all answer tokens by default).
* reference: the reference's schedule and execution, from UNEMBED_P
  initial values with no anchor term. Batch 1 sampled with
  replacement, Adam at a constant lr 0.5, --reference_steps steps, the full
  forward pass at every step (no activation reuse), and a Python loop that
  calls a jitted step and reads the loss every step (one host sync per step).
  Each example runs at its exact length.
* ours @ reference recall: write_joint_opt with the default settings
  (pretrained initial values and the anchor term included) and early
  stopping at the recall the reference reached (equal or better recall by
  construction).
* ours default: write_joint_opt with the default settings (target recall 1.0,
  patience).

Compilation is excluded everywhere: each method runs once untimed first.
Recall is the greedy full-answer recall of all facts under teacher forcing,
measured the same way for every method with a full forward pass. Nothing is
asserted; the printout goes into the notes with the machine it ran on.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from flax import nnx

from configs import tiny
from engram_jax import hashing
from engram_jax.memory import facts, forward, joint_opt, maps
from engram_jax.memory.composition import stack_overrides
from engram_jax.model import factory
from engram_jax.model.overrides import RowOverrides
from engram_jax.tokenizer import build_canonical_map, train_bpe
from engram_jax.users import fact_prompts, generate_users, persona_documents

_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Pretraining workdir to load the model from; unset: random tiny model.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 2048, "BPE vocabulary of the generated tokenizer.")
_NUM_DOCS = flags.DEFINE_integer("num_docs", 2000, "Persona documents the tokenizer trains on.")
_MIN_FACTS = flags.DEFINE_integer("min_facts", 34, "Use the first generated user with this many facts.")
_REFERENCE_STEPS = flags.DEFINE_integer("reference_steps", 1500, "Steps of the reference schedule.")
_LOSS_TOKENS = flags.DEFINE_enum("loss_tokens", "all", ["all", "first"], "Answer tokens in the loss.")
_SEED = flags.DEFINE_integer("seed", 0, "Model, user and sampling seed.")


def _setup():
  """Return (model, tokenizer, canonical map, layout, layer, fingerprint)."""
  if _CHECKPOINT_DIR.value:
    # NOTE: engram_jax.train.pretrained is still being written; its API may change.
    from engram_jax.train import pretrained  # pylint: disable=g-import-not-at-top
    loaded = pretrained.load_pretrained(_CHECKPOINT_DIR.value)
    # The loader places parameters on a one-device mesh. Plain single-device
    # arrays spare the reference's per-step calls a sharding check per parameter.
    graphdef, state = nnx.split(loaded.model)
    loaded.model = nnx.merge(graphdef, jax.device_put(state, jax.devices()[0]))
    fingerprint = maps.model_fingerprint(loaded.cfg, loaded.tokenizer.fingerprint, loaded.layout)
    return (loaded.model, loaded.tokenizer, loaded.canonical_map, loaded.layout,
            loaded.memory_layer, fingerprint)
  tokenizer = train_bpe(persona_documents(_NUM_DOCS.value, _SEED.value), _VOCAB_SIZE.value)
  canonical_map = build_canonical_map(tokenizer)
  cfg = tiny.get_config()
  cfg.model.vocab_size = _VOCAB_SIZE.value
  layout = hashing.layout_from_config(cfg.engram, canonical_map.num_canonical)
  model = factory.create_model(cfg, layout=layout, seed=_SEED.value)
  fingerprint = maps.model_fingerprint(cfg, tokenizer.fingerprint, layout)
  return model, tokenizer, canonical_map, layout, cfg.engram.layer_ids[-1], fingerprint


def _user_examples(tokenizer):
  for user in generate_users(16, _SEED.value):
    if len(user.facts) >= _MIN_FACTS.value:
      return facts.encode_facts(fact_prompts(user), tokenizer)
  raise ValueError(f"No generated user has {_MIN_FACTS.value} facts; lower --min_facts.")


def _recall(model, examples, layout, canonical_map, override_map, layer) -> float:
  batch = forward.build_fact_batch(examples, layout, canonical_map)
  logits = forward.full_answer_logits(
      model, batch, stack_overrides([override_map] * len(examples)), layer)
  correct = forward.answer_correct(
      logits, jnp.asarray(batch.answer_ids_NA), jnp.asarray(batch.answer_mask_NA))
  return float(np.mean(np.asarray(correct)))


def _reference_step_fn(graphdef, layer: int, tx, loss_tokens: str):
  """Build the jitted reference step: full forward with the whole map at all positions, then Adam."""
  def step(state, values_RW, opt_state, rows_R, ids_1T, rows_L1TG, pos_1A, answer_1A):
    model = nnx.merge(graphdef, state)
    mask_1A = forward.loss_mask(jnp.ones(answer_1A.shape, bool), loss_tokens)

    def loss_fn(values):
      logits_1TV = model(ids_1T, rows_L1TG, overrides={layer: RowOverrides(rows_R[None], values[None])})
      logits_1AV = jnp.take_along_axis(logits_1TV, pos_1A[..., None], axis=1)
      nll_1A = forward.answer_nll(logits_1AV, answer_1A)
      return jnp.sum(nll_1A * mask_1A) / jnp.sum(mask_1A)

    loss, grads = jax.value_and_grad(loss_fn)(values_RW)
    updates, opt_state = tx.update(grads, opt_state, values_RW)
    return optax.apply_updates(values_RW, updates), opt_state, loss
  return jax.jit(step)


def _run_reference(model, examples, layout, canonical_map, layer, rows_R, init_RW,
                   steps: int) -> tuple[np.ndarray, float]:
  """Run the reference loop; return the values and the seconds of the timed loop."""
  graphdef, state = nnx.split(model)
  tx = optax.adam(0.5)
  step_fn = _reference_step_fn(graphdef, layer, tx, _LOSS_TOKENS.value)
  inputs = []
  for example in examples:  # exact length per example, as the reference runs them
    batch = forward.build_fact_batch([example], layout, canonical_map)
    inputs.append(tuple(jnp.asarray(a) for a in (
        batch.ids_NT, batch.rows_LNTG, batch.answer_pos_NA, batch.answer_ids_NA)))
  rows_R, values_RW = jnp.asarray(rows_R), jnp.asarray(init_RW)
  opt_state = tx.init(values_RW)
  for example_inputs in inputs:  # compile every shape before timing
    jax.block_until_ready(step_fn(state, values_RW, opt_state, rows_R, *example_inputs))
  rng = np.random.default_rng(_SEED.value)
  start = time.perf_counter()
  for _ in range(steps):
    index = int(rng.integers(len(examples)))
    values_RW, opt_state, loss = step_fn(state, values_RW, opt_state, rows_R, *inputs[index])
    float(loss)  # the reference reads the loss every step
  return np.asarray(values_RW), time.perf_counter() - start


def _ours(model, examples, layout, canonical_map, fingerprint, settings):
  kwargs = dict(layout=layout, canonical_map=canonical_map, model_fingerprint=fingerprint,
                settings=settings)
  joint_opt.write_joint_opt(model, examples, **kwargs)  # compile, untimed
  return joint_opt.write_joint_opt(model, examples, **kwargs)


def main(argv):
  del argv
  model, tokenizer, canonical_map, layout, layer, fingerprint = _setup()
  examples = _user_examples(tokenizer)
  num_facts = len(examples)
  rows_R, init_RW = joint_opt.managed_rows(model, examples, layout, canonical_map, layer, None, 20.0)
  values_RW, reference_seconds = _run_reference(
      model, examples, layout, canonical_map, layer, rows_R, init_RW, _REFERENCE_STEPS.value)
  reference_map = maps.make_map(layer, rows_R, values_RW, owner=examples[0].owner,
                                fact_keys=[e.key for e in examples], strategy="joint_opt_reference",
                                settings={}, model_fingerprint=fingerprint)
  reference_recall = _recall(model, examples, layout, canonical_map, reference_map, layer)
  results = {"reference": {"seconds": reference_seconds, "recall": reference_recall,
                           "steps": _REFERENCE_STEPS.value}}

  base = joint_opt.JointOptSettings(loss_tokens=_LOSS_TOKENS.value, seed=_SEED.value)
  variants = {"ours_at_reference_recall": joint_opt.JointOptSettings(
      loss_tokens=_LOSS_TOKENS.value, seed=_SEED.value, target_recall=max(reference_recall, 1e-6),
      patience=None), "ours_default": base}
  for name, settings in variants.items():
    written, stats = _ours(model, examples, layout, canonical_map, fingerprint, settings)
    results[name] = {"seconds": stats.seconds, "steps": stats.steps, "train_recall": stats.recall,
                     "recall": _recall(model, examples, layout, canonical_map, written, layer)}

  for name, result in results.items():
    result["seconds_per_fact"] = result["seconds"] / num_facts
    result["speedup"] = results["reference"]["seconds"] / result["seconds"]
    print(f"{name:>26}: {result['seconds_per_fact']:.4f} s/fact  recall {result['recall']:.3f}  "
          f"{result['steps']:>5} steps  x{result['speedup']:.1f} vs reference")
  print(json.dumps({"facts": num_facts, "rows": int(rows_R.size), "layer": layer,
                    "devices": [d.device_kind for d in jax.devices()], "results": results}))
  logging.info("[bench] done")


if __name__ == "__main__":
  app.run(main)
