"""The per-round table that a run prints while it goes."""

from __future__ import annotations

from fedgraft.server.round_loop import RoundRecord

__all__ = ["TABLE_HEADER", "format_round"]

TABLE_HEADER = (
    f"{'round':>5} | {'train loss':>10} | {'val acc':>7} | {'test acc':>8} | "
    f"{'sent':>10} | {'received':>10} | {'seconds':>7}"
)


def _number(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _bytes(count: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def format_round(record: RoundRecord) -> str:
    """Return one table row: round, train loss, validation and test accuracy, bytes, seconds."""
    return (
        f"{record.round:>5} | {_number(record.train_loss, 10, 4)} | {_number(record.val_accuracy, 7, 4)} | "
        f"{_number(record.test_accuracy, 8, 4)} | {_bytes(record.bytes_sent):>10} | "
        f"{_bytes(record.bytes_received):>10} | {record.seconds:>7.1f}"
    )
