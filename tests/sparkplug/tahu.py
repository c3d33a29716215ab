"""Sparkplug B payloads through an independent implementation: pysparkplug and the
Eclipse Tahu sparkplug_b.proto it ships compiled.

  tahu.py decode            stdin: lines "<topic> <payload hex>"; stdout: one JSON object
                            per line (topic, timestamp, seq, metrics)
  tahu.py encode JSON       a command payload; JSON: [{"name"|"alias", "datatype", "value"}]
"""

import json
import sys

import pysparkplug
from pysparkplug._protobuf import Payload

BIRTHS = {"NBIRTH": pysparkplug.NBirth, "DBIRTH": pysparkplug.DBirth}


def metric(m):
    out = {}
    for field in ("name", "alias", "timestamp", "datatype", "is_historical", "is_null"):
        if m.HasField(field):
            out[field] = getattr(m, field)
    kind = m.WhichOneof("value")
    if kind is not None:
        out["value"] = getattr(m, kind)
        out["value_kind"] = kind
    if m.HasField("properties"):
        props = {}
        for key, value in zip(m.properties.keys, m.properties.values):
            props[key] = getattr(value, value.WhichOneof("value"))
        out["properties"] = props
    return out


def decode(line):
    topic, raw = line.split(" ")
    raw = bytes.fromhex(raw)
    parts = topic.split("/")
    if parts[1] == "STATE":
        return {"topic": topic, "state": json.loads(raw)}
    kind = parts[2]
    if kind in BIRTHS:
        # The library's own reading of a birth certificate must succeed too.
        BIRTHS[kind].decode(raw)
    payload = Payload()
    payload.ParseFromString(raw)
    out = {"topic": topic, "metrics": [metric(m) for m in payload.metrics]}
    if payload.HasField("timestamp"):
        out["timestamp"] = payload.timestamp
    if payload.HasField("seq"):
        out["seq"] = payload.seq
    return out


def encode(spec):
    payload = Payload()
    payload.timestamp = pysparkplug.get_current_timestamp()
    for item in json.loads(spec):
        m = payload.metrics.add()
        if "name" in item:
            m.name = item["name"]
        if "alias" in item:
            m.alias = item["alias"]
        m.datatype = item["datatype"]
        value = item["value"]
        if isinstance(value, bool):
            m.boolean_value = value
        elif isinstance(value, float):
            m.double_value = value
        elif item["datatype"] in (4, 8):
            m.long_value = value % (1 << 64)
        else:
            m.int_value = value % (1 << 32)
    return payload.SerializeToString().hex()


if __name__ == "__main__":
    if sys.argv[1] == "decode":
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(decode(line.strip())))
    else:
        print(encode(sys.argv[2]))
