"""Training: the dataset layer (loading, checking, fingerprinting and caching preprocessed cases) and, built on it,
the training loop. Import the submodules directly (e.g. ``maskmed_core.training.dataset``); this package imports
nothing itself, so that each part pays only for what it uses.
"""
