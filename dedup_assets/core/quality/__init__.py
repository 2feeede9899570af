"""How good the result is (assets `kurtosis_report`, `dedup_summary`, `dedup_evaluation`):
the paper's kurtosis evaluation and its gate (`kurtosis_report`, `statistics`), scores
against planted duplicates (`evaluation`, `planting`), the demo dataset (`demo_data`) and
the figures every stage shows (`plots`).

The top layer: it may import every other group; none imports it.
"""
