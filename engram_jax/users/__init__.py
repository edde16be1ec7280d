"""Per-user facts: file loaders, fact prompts, the answer matcher and synthetic users.

`load_users` / `load_corpus` read the reference JSON formats with errors that
name the file and field. `fact_prompts` gives each fact's writing prompt, gold,
anticipated phrasings and held-out question prompts. `answer_matches` and
`exact_match` are the one matcher every system is scored with.
`generate_users` and `persona_documents` draw deterministic synthetic users and
pretraining prose from separate seed streams.
"""

from engram_jax.users.persona import persona_documents
from engram_jax.users.prompts import (
    FactPrompt, answer_matches, cut_before_answer, exact_match, fact_phrasings, fact_prompts,
    fact_text, first_word_gold, indirect_probes, normalize_text, qa_prompt, render_answer)
from engram_jax.users.schema import (
    CorpusFact, DirectQA, Fact, IndirectQA, MultihopItem, User, facts_by_owner, load_corpus,
    load_multihop_chains, load_user, load_users, parse_user, save_user, user_to_json)
from engram_jax.users.synth import generate_users

__all__ = [
    "CorpusFact",
    "DirectQA",
    "Fact",
    "FactPrompt",
    "IndirectQA",
    "MultihopItem",
    "User",
    "answer_matches",
    "cut_before_answer",
    "exact_match",
    "fact_phrasings",
    "fact_prompts",
    "fact_text",
    "facts_by_owner",
    "first_word_gold",
    "generate_users",
    "indirect_probes",
    "load_corpus",
    "load_multihop_chains",
    "load_user",
    "load_users",
    "normalize_text",
    "parse_user",
    "persona_documents",
    "qa_prompt",
    "render_answer",
    "save_user",
    "user_to_json",
]
