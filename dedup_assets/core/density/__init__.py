"""Each class's density (asset `spline_fits`): the principal components of its latents
(`pca`), a quadratic B-spline density per component (`spline`, the paper's formula (2)) and
the fitted model a class is decided with (`class_density`).

Imports `data` only (to store a fit).
"""
