"""The model (assets `autoencoder`, `class_latents`): the paper's network, its training and
encoding (`autoencoder`), the seeded augmentations of invariant training (`augment`), the
training objective (`objective`) and when a kept model is trained again (`retraining`).

Imports no other group; `autoencoder` and `augment` are where torch is imported.
"""
