"""Entity states as bytes, one value per (view, entity) in the online store.

A value is `b"S1"`, the length of a JSON header (4 bytes, little endian), the
header (the str values of categorical last-value fields) and the state's numbers as
little-endian float64 in the plan's fixed layout. Keys carry the view version and
the plan's fingerprint (libs/common/clients/redis), so bytes are only ever read with
the layout that wrote them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np

from libs.common.features.engine import States
from libs.common.features.plan import ViewPlan

_MAGIC = b"S1"
_HEADER = struct.Struct("<2sI")


def state_width(plan: ViewPlan) -> int:
    """Numbers in one entity's state."""
    return 3 + len(plan.last_fields) * 3 + sum(g.n * g.width for g in plan.groups)


def encode(plan: ViewPlan, states: States) -> list[bytes]:
    """One value per entity row."""
    e = len(states)
    flat = np.concatenate(
        [
            states.newest[:, None],
            states.guard.astype(np.float64),
            states.last.reshape(e, -1),
            *(t.reshape(e, -1) for t in states.tiles),
        ],
        axis=1,
    ).astype("<f8")
    if not plan.categorical_fields:
        # Every value is the same header and a row of numbers: build them all in one
        # buffer and cut it (a pack and a copy per entity was a batch's biggest loop).
        head = np.frombuffer(_HEADER.pack(_MAGIC, 0), dtype=np.uint8)
        size = _HEADER.size + flat.shape[1] * 8
        buf = np.empty((e, size), dtype=np.uint8)
        buf[:, : _HEADER.size] = head
        buf[:, _HEADER.size :] = flat.view(np.uint8).reshape(e, -1)
        whole = buf.tobytes()
        return [whole[i : i + size] for i in range(0, e * size, size)]
    out = []
    for i in range(e):
        header = (
            json.dumps(states.last_text[i].tolist()).encode() if plan.categorical_fields else b""
        )
        out.append(_HEADER.pack(_MAGIC, len(header)) + header + flat[i].tobytes())
    return out


def decode(plan: ViewPlan, blobs: Sequence[bytes | None]) -> States:
    """States of the entities whose values are `blobs`; None (no value) is an empty state.

    Raises:
        ValueError: a value that is not a state of this plan's layout.
    """
    states = States.empty(plan, len(blobs))
    width = state_width(plan)
    rows = []
    flats = []
    for i, blob in enumerate(blobs):
        if blob is None:
            continue
        # A value shorter than the header is refused like any other misfit (unpack_from
        # would raise struct.error, which is not a ValueError).
        magic, size = _HEADER.unpack_from(blob) if len(blob) >= _HEADER.size else (b"", 0)
        start = _HEADER.size + size
        if magic != _MAGIC or len(blob) - start != width * 8:
            raise ValueError(
                f"state value of {len(blob)} bytes does not fit plan {plan.fingerprint}"
            )
        if size:
            states.last_text[i] = json.loads(blob[_HEADER.size : start])
        rows.append(i)
        flats.append(np.frombuffer(blob, dtype="<f8", offset=start))
    if not rows:
        return states
    flat = np.stack(flats)
    index = np.asarray(rows)
    f = len(plan.last_fields)
    states.newest[index] = flat[:, 0]
    states.guard[index] = flat[:, 1:3].astype(np.int64)
    at = 3
    states.last[index] = flat[:, at : at + f * 3].reshape(len(rows), f, 3)
    at += f * 3
    for g, group in enumerate(plan.groups):
        size = group.n * group.width
        states.tiles[g][index] = flat[:, at : at + size].reshape(len(rows), group.n, group.width)
        at += size
    return states
