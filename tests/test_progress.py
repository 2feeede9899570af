"""Progress lines at a readable pace: training and the evaluation log how far they are at
most every PROGRESS_EVERY_S seconds and how they ended, not a heartbeat per check, epoch or
class (two lines an epoch flooded the training run's log)."""

import numpy as np

from dedup_assets.core.data.progress import Throttle
from dedup_assets.core.model.autoencoder import EarlyStopping, train_autoencoder


def test_a_throttle_passes_the_first_line_then_one_per_interval_and_always_the_last():
    now = [0.0]
    said: list[str] = []
    throttle = Throttle(said.append, every_s=10.0, clock=lambda: now[0])
    for t in range(0, 35):  # a line a second for 35 s
        now[0] = float(t)
        throttle(f"at {t}")
    throttle("done", final=True)
    assert said == ["at 0", "at 10", "at 20", "at 30", "done"]
    assert throttle.dropped == 35 - 4


def _pixels(n: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def test_training_says_how_far_it_is_at_most_every_interval_and_how_it_ended():
    rule = EarlyStopping(max_epochs=3, check_every=8, patience=99, min_holdout=8)
    every: list[str] = []
    every_event = train_autoencoder(
        _pixels(), batch_size=8, early_stopping=rule, log=every.append, log_every_s=0.0
    )
    checks = len(every_event.holdout_losses)
    assert checks >= 3 and len(every_event.epoch_losses) == 3
    # one line per check and per epoch when nothing is throttled
    assert len(every) == checks + 3
    paced: list[str] = []
    result = train_autoencoder(
        _pixels(), batch_size=8, early_stopping=rule, log=paced.append, log_every_s=1e9
    )
    # The first line, then only the last: how it ended, with the latest held-out check.
    assert len(paced) == 2, paced
    assert paced[0].startswith("epoch 1/3; held-out loss")
    last = paced[-1]
    assert last.startswith("epoch 3/3: ") and "stopped: reached the limit of 3 epochs" in last
    seen, held = result.holdout_losses[-1]
    assert f"held-out loss {held:.5f} at {seen:,} images seen" in last
