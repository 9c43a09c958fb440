"""Training the hypernetworks: the shared core (student batches, losses, checkpoints, CLI) with ``d2l/`` and ``t2l/``."""
