"""Token rows of different lengths -> one padded ``(N, T)`` batch and its attention mask.

Example:
    >>> ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    >>> pad_batch([[5, 6, 7], [8]], pad_id=0, left=True)[0].tolist()
    [[5, 6, 7], [0, 0, 8]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_batch(rows: Sequence[Sequence[int] | torch.Tensor], pad_id: int, *, left: bool = False,
              mask_dtype: torch.dtype = torch.long) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows padded with ``pad_id`` to the longest one, and the mask of real tokens.

    Args:
        rows: token ids per row (lists or 1-D tensors); at least one.
        pad_id: the id written into padded positions (e.g. the tokenizer's pad id, or -100 for labels).
        left: pad on the left (for generation) instead of on the right.
        mask_dtype: dtype of the mask (1/True at real tokens).

    Raises:
        ValueError: ``rows`` is empty.
    """
    if not rows:
        raise ValueError("pad_batch needs at least one row")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(rows), width), dtype=mask_dtype)  # (N, T)
    for i, row in enumerate(rows):
        n = len(row)
        span = slice(width - n, width) if left else slice(0, n)
        ids[i, span] = torch.as_tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask
