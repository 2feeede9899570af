"""Which images are kept (assets `reference_pool`, `class_keep_lists`, `keep_list`,
`cross_class_duplicates`): the similarity spaces (`similarity`, `dct_descriptor`, `phash`,
`pdq`), the exact and approximate joins (`ann_join`), the greedy keep (`keep_policy`), the
function that decides a class (`class_decision`) and deciding it at every threshold key
(`class_keep`), false-removal budgets (`calibration`, `local_scaling`, `reference_pool`),
near-identical images across classes (`cross_class`) and the keep list's rules
(`integrity`).

Built on `data`, `density` (a class's fit) and `model` (encoding mirrored decoys, imported
where they are encoded).
"""
