"""The event loop the relays run on: uvloop when it is installed (``pip install kproxy[fast]``),
asyncio's own otherwise. The relays work on both; uvloop's is cheaper per wake-up."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


def use_fast_event_loop() -> bool:
    """Make asyncio.run() create uvloop loops if uvloop is installed; True if it did."""
    try:
        import uvloop
    except ImportError:
        log.info("uvloop not installed: relaying on asyncio's own event loop")
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
