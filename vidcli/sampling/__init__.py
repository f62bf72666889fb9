"""Sampling-time machinery around the rectified-flow loop: acceleration policies the loop consults.

`cache/` holds the training-free caching policies (one module per method).
"""
