"""The paper's experiments at our scale, each a function returning a result whose `to_dict()` is
what its command prints (`python -m analyses.<name>`). Imports every wing but `training`.

words           word lists, mentions, continuation likelihood (shared by the experiments)
topic_control   topic steering by scaling the weights of topic senses
gender_bias     career-noun bias ratio, and down-weighting the he/she sense
knowledge_edit  the knowledge edit (" United" minus " States" plus " Nations")
lexsim          choosing a sense on one word-similarity benchmark, reporting on another
"""
