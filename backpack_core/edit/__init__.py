"""Edits: what an edit is (data, a JSON-serialisable spec) and how it enters the model.
Imports `common` and `model`.

specs       edit kinds (ablate/scale/replace senses, scale contextualization, knowledge edit),
            EditSet (validation, JSON round trip, strength scaling) and their compilation into
            a model-level `Intervention`; the base weights are never changed
generation  text generation with an edit set applied, and side-by-side before/after
finetune    learn an edit from canonical examples: sense finetuning (add_sense deltas on
            importance-selected senses, strength within a measured budget), full finetuning and
            LoRA baselines in the same harness, logit transfer to a same-tokenizer model
export      an edit set baked into a model directory (tables the model carries), its model card;
            edit packs (an edit set with the base model's fingerprint and tokenizer)
"""
