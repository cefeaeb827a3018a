#!/usr/bin/env python3
"""Writes errors.json and binary.json from the rules in docs/PROTOCOL.md.

A second, independent implementation of the error body and the binary codec,
written from the document alone (frames.json and hellos.json are written by
hand): the Swift tests check that Intercom produces and accepts exactly these
bytes, so the document, this script and the code cannot drift apart unnoticed.
Run it after changing the document: python3 docs/conformance/make_vectors.py
"""
import json
import struct
from pathlib import Path

HERE = Path(__file__).parent


def le(value, size):
    return value.to_bytes(size, "little")


def varint(value):
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def zigzag(value):
    return ((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF


def signed(value):  # Int, Int16, Int32, Int64
    return varint(zigzag(value))


def string(text):
    data = text.encode()
    return varint(len(data)) + data


def double(value):
    return struct.pack("<d", value)


def key(name):
    if isinstance(name, int):
        return varint(zigzag(name) << 1 | 1)
    return varint(len(name.encode()) << 1) + name.encode()


def keyed(*fields):
    """A keyed container: u32 count, then key and value per field present."""
    return le(len(fields), 4) + b"".join(key(k) + v for k, v in fields)


def unkeyed(*values):
    return le(len(values), 4) + b"".join(values)


def sequence(*values):  # arrays, sets, dictionaries (pairs counted once)
    return varint(len(values)) + b"".join(values)


def optional(value):
    return b"\x00" if value is None else b"\x01" + value


def error_body(code, type_name, message, details=b""):
    return (le(len(code.encode()), 1) + code.encode() + le(len(type_name.encode()), 2) + type_name.encode()
            + le(len(message.encode()), 4) + message.encode() + details)


# name, Swift type (as the tests declare it), the value as Intercom's JSON codec writes it, the bytes
BINARY = [
    ("Bool true", "Bool", True, b"\x01"),
    ("UInt8 200", "UInt8", 200, b"\xc8"),
    ("Int8 -2", "Int8", -2, b"\xfe"),
    ("Int 0", "Int", 0, signed(0)),
    ("Int 1", "Int", 1, signed(1)),
    ("Int -1", "Int", -1, signed(-1)),
    ("Int 64", "Int", 64, signed(64)),
    ("Int -65", "Int", -65, signed(-65)),
    ("Int max", "Int", 2**63 - 1, signed(2**63 - 1)),
    ("Int min", "Int", -(2**63), signed(-(2**63))),
    ("Int16 -300", "Int16", -300, signed(-300)),
    ("UInt32 300", "UInt32", 300, varint(300)),
    ("UInt64 max", "UInt64", 2**64 - 1, varint(2**64 - 1)),
    ("Double 1.5", "Double", 1.5, double(1.5)),
    ("Float -2", "Float", -2.0, struct.pack("<f", -2.0)),
    ("String empty", "String", "", string("")),
    ("String with UTF-8", "String", "héllo", string("héllo")),
    ("[UInt8]: length and raw bytes", "[UInt8]", [1, 2, 3], varint(3) + bytes([1, 2, 3])),
    ("Data: like [UInt8]", "Data", "AQID", varint(3) + bytes([1, 2, 3])),
    ("[Int]: varint count", "[Int]", [1, -1], sequence(signed(1), signed(-1))),
    ("[String]", "[String]", ["a"], sequence(string("a"))),
    ("Set<Int>", "Set<Int>", [5], sequence(signed(5))),
    ("[String: Int]: count, then key and value", "[String: Int]", {"k": 1}, sequence(string("k") + signed(1))),
    ("Int? nil at the top level: presence byte", "Int?", None, optional(None)),
    ("Int? 5 at the top level", "Int?", 5, optional(signed(5))),
    ("[Int?]: a presence byte per element", "[Int?]", [None, 2], sequence(optional(None), optional(signed(2)))),
    ("struct with a nil optional field: the field is absent", "Labelled { a: Int, b: String? }", {"a": 1},
     keyed(("a", signed(1)))),
    ("struct with a present optional field: no presence byte", "Labelled { a: Int, b: String? }", {"a": 1, "b": "x"},
     keyed(("a", signed(1)), ("b", string("x")))),
    ("nested struct and array", "Outer { inner: Point { x: Int, y: Int }, tags: [String] }",
     {"inner": {"x": 1, "y": -1}, "tags": ["a"]},
     keyed(("inner", keyed(("x", signed(1)), ("y", signed(-1)))), ("tags", sequence(string("a"))))),
    ("struct with integer coding keys", "IntKeyed { id: Int (key 1), flag: Bool (key -2) }", {"id": 9, "flag": True},
     keyed((1, signed(9)), (-2, b"\x01"))),
    ("struct without stored properties", "Snapshot {}", {}, keyed()),
    ("single-value wrapper: just the value", "Meters (single value Double)", 2.0, double(2.0)),
    ("custom unkeyed container: u32 count", "Pair (unkeyed Int, Int)", [1, 2], unkeyed(signed(1), signed(2))),
    ("enum with String raw values: the raw value", "Color: String { red }", "red", string("red")),
    ("enum with Int raw values: the raw value", "Level: Int { high = 3 }", 3, signed(3)),
    ("enum case with a labelled associated value", "Shape { circle(radius: Double), square(Int), empty }",
     {"circle": {"radius": 2.0}}, keyed(("circle", keyed(("radius", double(2.0)))))),
    ("enum case with an unlabelled associated value: key _0", "Shape { circle(radius: Double), square(Int), empty }",
     {"square": {"_0": 7}}, keyed(("square", keyed(("_0", signed(7)))))),
    ("enum case without associated values: an empty nested container", "Shape { circle(radius: Double), square(Int), empty }",
     {"empty": {}}, keyed(("empty", keyed()))),
    ("UUID: 16 bytes", "UUID", "00112233-4455-6677-8899-AABBCCDDEEFF", bytes.fromhex("00112233445566778899aabbccddeeff")),
    ("Date: Double seconds since 1970", "Date", "1970-01-02T00:00:00Z", double(86400.0)),
    ("URL: its absolute string", "URL", "https://example.com/a", string("https://example.com/a")),
]

ERRORS = {
    "description": "Intercom wire protocol v1: error frame payloads (docs/PROTOCOL.md, 'Error body'). 'bodies' parse to "
    "the fields given and the fields write exactly these bytes; 'details' are the bytes after the message (with the "
    "frame's typedError flag: the thrown error in the connection's codec, or in JSON if the frame has the jsonPayload "
    "flag). 'invalid' payloads do not parse. 'connectionErrorCodes' are every code an error frame with id 0 carries when "
    "a side closes the connection over a protocol violation; its type name is then 'IntercomWire.ProtocolError'.",
    "bodies": [
        {"name": "no handler", "code": "unknownMethod", "typeName": "", "message": "no handler", "details": ""},
        {"name": "a typed error from a handler, binary details of struct { reason: String }", "code": "remote",
         "typeName": "Demo.Failure", "message": "boom", "details": keyed(("reason", string("x"))).hex()},
        {"name": "the connection is closed: not speaking Intercom", "code": "badMagic",
         "typeName": "IntercomWire.ProtocolError", "message": "not IC", "details": ""},
        {"name": "UTF-8 in the message", "code": "timeout", "typeName": "", "message": "zu spät", "details": ""},
    ],
    "invalid": [
        {"name": "empty", "hex": ""},
        {"name": "code longer than the payload", "hex": "05 6162"},
        {"name": "message length past the end", "hex": "01 61 0000 05000000 6869"},
    ],
    "connectionErrorCodes": ["badMagic", "unsupportedVersion", "unknownFrameKind", "malformedHeader", "frameTooLarge",
                             "extensionTooLarge", "malformedExtension", "malformedHandshake", "incompatiblePeer"],
}
for entry in ERRORS["bodies"]:
    entry["hex"] = error_body(entry["code"], entry["typeName"], entry["message"], bytes.fromhex(entry["details"])).hex()

binary = {
    "description": "Intercom wire protocol v1: the binary codec (codec id 1, docs/PROTOCOL.md 'Binary codec'). Each "
    "value, of the Swift type described, encodes to exactly these bytes and these bytes decode to it. 'json' is the "
    "same value as Intercom's JSON codec (codec id 2) writes it: Data as base64, Date as ISO 8601, enums with "
    "associated values as Swift's synthesised Codable does.",
    "values": [{"name": n, "type": t, "json": json.dumps(j, separators=(",", ":"), ensure_ascii=False, sort_keys=True),
                "hex": b.hex()} for n, t, j, b in BINARY],
}
for name, content in [("errors.json", ERRORS), ("binary.json", binary)]:
    (HERE / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
