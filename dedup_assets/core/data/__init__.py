"""Data in and out (assets `image_catalog`, `class_images`): listing and decoding the source
folder (`image_folder`, `source_index`, the worker `pools`), each class's catalog and pixel
store (`class_catalog`), where every output lives (`layout`), the stored tables and their
provenance (`artifacts`), atomic writes (`atomic_io`) and the threshold keys outputs are
filed under (`thresholds`).

The bottom layer: it imports no other group.
"""
