"""How long the store keeps each dataset: a bucket lifecycle rule on MinIO, a sweep elsewhere.

:meth:`StoreSettings.retention` says how many days each prefix is kept. On S3 the bucket
carries one expiry rule per prefix (set where the bucket is created, and again by
``digitloop store compact`` for a bucket made before), so MinIO deletes old objects itself.
The local backend has no lifecycle: :func:`expired_partitions` picks the whole ``dt=``
partitions past their retention and the compaction job deletes them
(:func:`services.store.compaction.sweep`). Both count days from
an object's date: MinIO from its creation, the sweep from its partition's date.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from contracts.records import as_utc

if TYPE_CHECKING:
    from minio.lifecycleconfig import LifecycleConfig

RULE_PREFIX = "digitloop-retention-"


def lifecycle_config(days: dict[str, int]) -> LifecycleConfig:
    """One enabled expiry rule per prefix, named after it."""
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

    return LifecycleConfig(
        [
            Rule(
                ENABLED,
                rule_filter=Filter(prefix=prefix),
                rule_id=RULE_PREFIX + prefix.rstrip("/"),
                expiration=Expiration(days=n),
            )
            for prefix, n in sorted(days.items())
        ]
    )


def lifecycle_days(config: LifecycleConfig | None) -> dict[str, int]:
    """``{prefix: days}`` of the enabled expiry rules of a bucket's lifecycle."""
    if config is None:
        return {}
    found = {}
    for rule in config.rules:
        prefix = rule.rule_filter.prefix if rule.rule_filter else None
        if rule.status == "Enabled" and prefix and rule.expiration and rule.expiration.days:
            found[prefix] = int(rule.expiration.days)
    return found


def expired_partitions(
    dirs: dict[str, list[str]], days: dict[str, int], now: datetime
) -> list[str]:
    """The ``<prefix>dt=YYYY-MM-DD/`` folders whose whole day is older than its retention.

    ``dirs`` maps each prefix to the folder names under it (``dt=...``). A day is expired
    once all of it is older than ``days[prefix]`` days: nothing younger is ever deleted.
    """
    today = as_utc(now, "now").date()
    expired = []
    for prefix, names in sorted(dirs.items()):
        if prefix not in days:
            continue
        oldest_kept = today - timedelta(days=days[prefix])
        for name in names:
            try:
                day = date.fromisoformat(name.removeprefix("dt="))
            except ValueError:
                continue
            if name.startswith("dt=") and day < oldest_kept:
                expired.append(f"{prefix}{name}/")
    return expired
