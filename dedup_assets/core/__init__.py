"""The numerical core: plain Python, numpy and torch, no Dagster import (the assets in
`dedup_assets.assets` are the wiring over it).

Five groups, in layers: `data` at the bottom; `model` and `density` on it, independent of
each other; `decision` above them; `quality` on top. A module imports its own group and the
groups below it, never one above (`tests/test_layers.py` checks it).
"""
