"""The server's garbage-collector settings (tera_proxy.cli.tune_gc)."""

from __future__ import annotations

import gc

from tera_proxy import cli


def test_tune_gc_freezes_startup_objects_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        cli.tune_gc()
        assert gc.get_threshold() == cli.GC_THRESHOLD
        assert cli.GC_THRESHOLD[0] > before[0]
        # What existed before serving is out of the collector's sight.
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
