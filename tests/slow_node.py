"""blip_captioner with a slow model, for the tests that show the executor never waits for it.

`python tests/slow_node.py --ros-args ...`: the real node and the real tiny BLIP, but every caption and every
adapter swap first sleeps BLIP_SLOW_S seconds (as BLIP-large does on a small CPU), after printing "slow caption
begins" or "slow adapter swap begins" to stderr (the tests wait for those lines, not for a fixed time).
"""

from __future__ import annotations

import os
import sys
import time

from blip_lora_core.runtime import live

SLOW_S = float(os.environ.get("BLIP_SLOW_S", "3"))
_load = live.load_captioner


def _slow_captioner(*args, **kwargs):
    captioner = _load(*args, **kwargs)
    caption_results, set_adapter = captioner.caption_results, captioner.set_adapter

    def slow_caption_results(images):
        print("slow caption begins", file=sys.stderr, flush=True)
        time.sleep(SLOW_S)
        return caption_results(images)

    def slow_set_adapter(*a, **kw):
        print("slow adapter swap begins", file=sys.stderr, flush=True)
        time.sleep(SLOW_S)
        return set_adapter(*a, **kw)

    captioner.caption_results, captioner.set_adapter = slow_caption_results, slow_set_adapter
    return captioner


live.load_captioner = _slow_captioner

if __name__ == "__main__":
    from blip_captioner.node import main

    sys.exit(main(sys.argv))
