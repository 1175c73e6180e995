"""Reading the model: what senses say, which weights a context chooses, what caused a prediction,
and what an edit set does. Imports `common`, `model` and `edit`.

readouts      sense readouts (E . C(word)_l), context readouts, top tokens, attribution types
session       ContextSession: one forward pass over a text, then exact re-evaluation under any
              edit set and exact per-(source, sense) attribution
compare       before/after comparisons of next-token distributions (KL, rank changes)
sense_bank    every (word, sense) vector in one bank, for search by direction
atlas         how each sense of each word is used over a corpus
sense_cards   a card per (word, sense): top / bottom words, near-duplicate senses; sense similarity
edit_effects  an edit set's effect over a corpus: blast radius, loss inside/outside, prompts
patching      clean vs corrupted prompt: sense / weight patching and contextualizer activation
              patching, split exactly per (source, sense)
twin          the Backpack beside its Transformer twin on one text: predictions, losses, where
              they disagree
"""
