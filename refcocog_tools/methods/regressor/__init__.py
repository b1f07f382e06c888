"""The study's two MLP regressors on CLIP embeddings: heads and losses, the cached training
data, the training loop, and a trained head as a grounding method.

May import what ``methods`` may, and ``methods``' own interface modules.
"""
