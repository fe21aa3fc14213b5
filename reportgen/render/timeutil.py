"""Build time for the footer, only when the spec asks; honours SOURCE_DATE_EPOCH."""
from __future__ import annotations

import datetime as dt
import os


def build_time_string() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch
            else dt.datetime.now(dt.timezone.utc))
    return when.strftime("%Y-%m-%d %H:%M UTC")
