"""A client mod that records exactly what a hospital sends back, for the message audit.

Enabled by the node-config key `audit-dir`: every reply the ClientApp produces is written there
as its serialized bytes (what goes on the wire, before transport encryption) plus a JSON
summary of its records (array names, dtypes, shapes; metric and config values).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.common import Context, Message
from flwr.common.serde import recorddict_to_proto


def audit_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
    reply: Message = call_next(msg, ctxt)
    folder = ctxt.node_config.get("audit-dir")
    if not folder or reply.has_error():
        return reply
    out = Path(str(folder))
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{reply.metadata.message_type}-{msg.metadata.message_id[:12]}"
    (out / f"{stem}.bin").write_bytes(recorddict_to_proto(reply.content).SerializeToString())
    (out / f"{stem}.json").write_text(json.dumps(summarize(reply), default=str), encoding="utf-8")
    return reply


def summarize(reply: Message) -> dict[str, Any]:
    content = reply.content
    return {
        "message_type": reply.metadata.message_type,
        "arrays": {
            name: {k: _describe(a) for k, a in record.items()}
            for name, record in content.array_records.items()
        },
        "metrics": {name: dict(record) for name, record in content.metric_records.items()},
        "configs": {name: dict(record) for name, record in content.config_records.items()},
    }


def _describe(array: Any) -> list[Any]:
    """dtype and shape; legacy (NumPyClient) arrays carry np.save bytes, so decode those."""
    decoded = array.numpy()
    return [str(decoded.dtype), list(decoded.shape)]
