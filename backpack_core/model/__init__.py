"""The model: what a Backpack is and how it is loaded, run and measured. Imports only `common`.

config      ModelConfig (the dimensions; presets; published checkpoint details)
backpack    the Backpack in plain PyTorch, read top to bottom like the paper: sense network ->
            senses, contextualization network -> weights, weighted sum -> logits; the
            Transformer twin; `Intervention` (how edits and patches enter a forward pass);
            `EditOverrides` (the edits an exported edited model carries)
fingerprint weights_fingerprint: which model this is (sense bank, atlas, edit packs)
tokenizer   byte-level BPE (GPT-2's, or trained on our corpus) without transformers
vocab       words <-> token ids: resolve_word, single_token_id, token_text, parse_word (word boxes)
hf          BackpackConfig / BackpackLM: the transformers integration (generate, Auto classes)
loading     load_backpack / load_model / save_backpack: our directories and the published layout
access      which model directories a server may load (BACKPACK_MODEL_ROOTS)
evaluation  perplexity and word similarity of a model
windows     texts longer than the context: the last tokens, or one window of a sliding window
"""
