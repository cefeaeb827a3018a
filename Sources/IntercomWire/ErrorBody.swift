public import NIOCore

/// The payload of an `error` frame: what failed, in a form any language can read.
///
/// Layout: `u8` code length, code (UTF-8); `u16` type-name length, type name;
/// `u32` message length, message; then the rest of the payload is `details`
/// (the thrown error encoded with the connection's codec when the frame has the
/// ``FrameFlags/typedError`` flag, else empty).
public struct ErrorBody: Sendable {
    /// Machine-readable code (for example `unknownMethod`, `remote`, `timeout`).
    public var code: String
    /// The Swift type name of the thrown error, or empty.
    public var typeName: String
    /// What happened, for a person.
    public var message: String
    /// The thrown error encoded with the connection's codec, or empty.
    public var details: ByteBuffer

    /// Creates an error body.
    public init(code: String, typeName: String = "", message: String, details: ByteBuffer = ByteBuffer()) {
        self.code = code
        self.typeName = typeName
        self.message = message
        self.details = details
    }

    /// Writes the body; over-long fields are truncated to their length field's range.
    public func write(into buffer: inout ByteBuffer) {
        let code = Array(self.code.utf8.prefix(Int(UInt8.max)))
        buffer.writeInteger(UInt8(code.count))
        buffer.writeBytes(code)
        let typeName = Array(self.typeName.utf8.prefix(Int(UInt16.max)))
        buffer.writeInteger(UInt16(typeName.count), endianness: .little)
        buffer.writeBytes(typeName)
        let message = Array(self.message.utf8.prefix(1 << 20))
        buffer.writeInteger(UInt32(message.count), endianness: .little)
        buffer.writeBytes(message)
        var details = self.details
        buffer.writeBuffer(&details)
    }

    /// Parses an error body.
    /// - Throws: ``ProtocolError/Code/malformedExtension`` if the lengths do not fit the payload.
    public init(from payload: ByteBuffer) throws(ProtocolError) {
        var buffer = payload
        func string<L: FixedWidthInteger>(_: L.Type) -> String? {
            guard let length = buffer.readInteger(endianness: .little, as: L.self),
                let bytes = buffer.readSlice(length: Int(length))
            else { return nil }
            return String(decoding: bytes.readableBytesView, as: UTF8.self)
        }
        guard let code = string(UInt8.self), let typeName = string(UInt16.self), let message = string(UInt32.self)
        else {
            throw ProtocolError(.malformedHeader, "error frame payload of \(payload.readableBytes) bytes does not parse")
        }
        self.init(code: code, typeName: typeName, message: message, details: buffer)
    }
}

extension ErrorBody {
    /// The body that tells the other side why its connection is being closed:
    /// the code names the violation (`badMagic`, `unsupportedVersion`, …).
    public init(connectionError error: ProtocolError) {
        self.init(code: error.code.description, typeName: "IntercomWire.ProtocolError", message: error.message)
    }

    /// A whole error frame carrying this body (id 0: about the whole connection).
    public func frame(id: UInt64, flags: FrameFlags = []) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(FrameHeader.size + 8 + self.code.utf8.count + self.typeName.utf8.count + self.message.utf8.count)
        let mark = FrameHeader.begin(into: &buffer, kind: .error, flags: flags, id: id)
        self.write(into: &buffer)
        FrameHeader.finish(mark, in: &buffer)
        return buffer
    }
}
