"""The contracts rollout/, reward/ and learner/ share (a leaf: imports nothing of ours but minimind):
the typed rollout batch (batch.py) and its file form (batch_io.py), and the typed step stats that say
how each stat reduces (stats.py)."""
