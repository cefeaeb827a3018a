#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif

/// Turns a binary-codec payload into JSON text with the schema of its type —
/// how `intercom monitor` shows payloads that are not self-describing. Reads
/// the format of docs/PROTOCOL.md ("Binary codec") without the Swift type.
public struct BinaryPayloadRenderer: Sendable {
    /// The named types the shapes refer to.
    public let types: [String: TypeSchema]

    /// A renderer for shapes using `types`.
    public init(types: [String: TypeSchema]) { self.types = types }

    /// The JSON text of `bytes` read as `shape`.
    ///
    /// - Throws: ``RenderError`` when the bytes do not fit the shape (cut short, an unknown field).
    public func render(_ bytes: [UInt8], as shape: WireShape) throws(RenderError) -> String {
        var reader = Reader(bytes: bytes)
        var out = ""
        try self.value(shape, &reader, &out, depth: 0)
        guard reader.offset == bytes.count else { throw RenderError("\(bytes.count - reader.offset) bytes left after the value") }
        return out
    }

    /// Why a payload could not be shown.
    public struct RenderError: Error, CustomStringConvertible {
        /// What went wrong.
        public let description: String
        init(_ description: String) { self.description = description }
    }

    private struct Reader {
        let bytes: [UInt8]
        var offset = 0

        mutating func byte() throws(RenderError) -> UInt8 {
            guard self.offset < self.bytes.count else { throw RenderError("cut short at byte \(self.offset)") }
            defer { self.offset += 1 }
            return self.bytes[self.offset]
        }

        mutating func take(_ count: Int) throws(RenderError) -> ArraySlice<UInt8> {
            guard count >= 0, count <= self.bytes.count - self.offset else { throw RenderError("cut short at byte \(self.offset)") }
            defer { self.offset += count }
            return self.bytes[self.offset..<self.offset + count]
        }

        mutating func varint() throws(RenderError) -> UInt64 {
            var value: UInt64 = 0
            for shift in stride(from: 0, to: 70, by: 7) {
                let byte = try self.byte()
                value |= UInt64(byte & 0x7F) << UInt64(shift)
                if byte & 0x80 == 0 { return value }
            }
            throw RenderError("a varint longer than 10 bytes")
        }

        mutating func little(_ count: Int) throws(RenderError) -> UInt64 {
            try self.take(count).reversed().reduce(0) { $0 << 8 | UInt64($1) }
        }

        mutating func u32() throws(RenderError) -> Int { Int(try self.little(4)) }

        mutating func string() throws(RenderError) -> String {
            let length = try self.varint()
            guard length <= UInt64(self.bytes.count) else { throw RenderError("a string longer than the payload") }
            return String(decoding: try self.take(Int(length)), as: UTF8.self)
        }

        /// A keyed container's key tag: its name (an integer key as its decimal digits).
        mutating func key() throws(RenderError) -> String {
            let tag = try self.varint()
            if tag & 1 == 1 {
                let zigzag = tag >> 1
                return String(Int64(bitPattern: (zigzag >> 1) ^ (0 &- (zigzag & 1))))
            }
            return String(decoding: try self.take(Int(tag >> 1)), as: UTF8.self)
        }
    }

    private func value(_ shape: WireShape, _ reader: inout Reader, _ out: inout String, depth: Int) throws(RenderError) {
        guard depth < 64 else { throw RenderError("nested deeper than 64") }
        switch shape {
        case .primitive(let primitive):
            try self.primitive(primitive, &reader, &out)
        case .optional(let wrapped):
            if try reader.byte() == 0 { out += "null" } else { try self.value(wrapped, &reader, &out, depth: depth + 1) }
        case .array(let element):
            let count = try reader.varint()
            guard count <= UInt64(reader.bytes.count - reader.offset) else { throw RenderError("an array longer than the payload") }
            out += "["
            for index in 0..<Int(count) {
                if index > 0 { out += "," }
                try self.value(element, &reader, &out, depth: depth + 1)
            }
            out += "]"
        case .dictionary(let key, let value):
            let count = try reader.varint()
            guard count <= UInt64(reader.bytes.count - reader.offset) else { throw RenderError("a dictionary longer than the payload") }
            // String keys make an object; other keys a list of [key, value] pairs.
            let object = key == .primitive(.string)
            out += object ? "{" : "["
            for index in 0..<Int(count) {
                if index > 0 { out += "," }
                if !object { out += "[" }
                try self.value(key, &reader, &out, depth: depth + 1)
                out += object ? ":" : ","
                try self.value(value, &reader, &out, depth: depth + 1)
                if !object { out += "]" }
            }
            out += object ? "}" : "]"
        case .named(let name):
            guard let type = self.types[name] else { throw RenderError("no schema for \(name)") }
            try self.layout(type.layout, name, &reader, &out, depth: depth + 1)
        }
    }

    private func layout(
        _ layout: TypeSchema.Layout, _ name: String, _ reader: inout Reader, _ out: inout String, depth: Int
    ) throws(RenderError) {
        switch layout {
        case .record(let fields):
            try self.fields(fields, name, &reader, &out, depth: depth)
        case .cases(let cases):
            let count = try reader.u32()
            guard count == 1 else { throw RenderError("\(name): \(count) cases in one value") }
            let key = try reader.key()
            guard let fields = cases[key] else { throw RenderError("\(name) has no case '\(key)'") }
            out += "{\(Self.quoted(key)):"
            try self.fields(fields, "\(name).\(key)", &reader, &out, depth: depth)
            out += "}"
        case .enumeration(let raw, _), .value(let raw):
            try self.value(raw, &reader, &out, depth: depth)
        case .sequence(let shapes):
            let count = try reader.u32()
            guard count == shapes.count else { throw RenderError("\(name): \(count) values where the schema has \(shapes.count)") }
            out += "["
            for (index, shape) in shapes.enumerated() {
                if index > 0 { out += "," }
                try self.value(shape, &reader, &out, depth: depth)
            }
            out += "]"
        }
    }

    /// A keyed container: u32 count, then key tag and value per field (a nil field is absent).
    private func fields(
        _ fields: [WireField], _ name: String, _ reader: inout Reader, _ out: inout String, depth: Int
    ) throws(RenderError) {
        let count = try reader.u32()
        out += "{"
        for index in 0..<count {
            let key = try reader.key()
            guard let field = fields.first(where: { $0.name == key }) else { throw RenderError("\(name) has no field '\(key)'") }
            if index > 0 { out += "," }
            out += "\(Self.quoted(key)):"
            try self.value(field.shape, &reader, &out, depth: depth)
        }
        out += "}"
    }

    private func primitive(_ primitive: WireShape.Primitive, _ reader: inout Reader, _ out: inout String) throws(RenderError) {
        switch primitive {
        case .bool: out += try reader.byte() == 0 ? "false" : "true"
        case .int8: out += String(Int8(bitPattern: try reader.byte()))
        case .uint8: out += String(try reader.byte())
        case .int16, .int32, .int64:
            let zigzag = try reader.varint()
            out += String(Int64(bitPattern: (zigzag >> 1) ^ (0 &- (zigzag & 1))))
        case .uint16, .uint32, .uint64, .descriptor: out += String(try reader.varint())
        case .float: out += Self.number(Double(Float(bitPattern: UInt32(try reader.little(4)))))
        case .double: out += Self.number(Double(bitPattern: try reader.little(8)))
        case .string, .url: out += Self.quoted(try reader.string())
        case .bytes:
            let length = try reader.varint()
            guard length <= UInt64(reader.bytes.count) else { throw RenderError("bytes longer than the payload") }
            out += Self.quoted(Data(try reader.take(Int(length))).base64EncodedString())
        case .date:
            let seconds = Double(bitPattern: try reader.little(8))
            out += Self.quoted(Date(timeIntervalSince1970: seconds).formatted(.iso8601))
        case .uuid:
            let raw = Array(try reader.take(16))
            let hex = raw.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
            let parts = [hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4), hex.dropFirst(20)]
            out += Self.quoted(parts.joined(separator: "-").uppercased())
        case .json, .none:
            throw RenderError("a \(primitive.rawValue) value has no binary layout to read")
        }
    }

    private static func number(_ value: Double) -> String {
        guard value.isFinite else { return Self.quoted(String(value)) }
        return value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }

    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
