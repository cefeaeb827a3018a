public import NIOCore

/// Cuts frames out of a byte stream. Pure: feed it bytes, take frames out.
///
/// Each header is checked as soon as its bytes arrive — magic, version, kind,
/// extension size and payload size against ``WireLimits`` — so a bad or oversized
/// frame is refused before its body is awaited or any memory is reserved for it.
/// Payloads are slices of the input buffer, never copies.
public struct FrameDecoder: Sendable {
    /// The limits enforced on input.
    public var limits: WireLimits

    /// Creates a decoder enforcing `limits`.
    public init(limits: WireLimits = .defaults) {
        self.limits = limits
    }

    /// Takes the next whole frame from the front of `buffer`.
    ///
    /// - Returns: the frame, or `nil` if `buffer` does not yet hold a whole frame
    ///   (nothing is consumed then).
    /// - Throws: ``ProtocolError`` if the bytes cannot be the start of a valid frame.
    public func next(from buffer: inout ByteBuffer) throws(ProtocolError) -> Frame? {
        let readable = buffer.readableBytes
        guard readable >= 4 else {
            if readable >= 1 { try Self.checkMagic(buffer, count: readable) }
            return nil
        }
        // The fixed header's fields in one access to the buffer's storage rather
        // than one per field: this runs once per frame on every hot path.
        let (magic, version, kindByte, flagBits, extensionLength, id, payloadLength) = buffer.withUnsafeReadableBytes {
            raw -> (UInt16, UInt8, UInt8, UInt16, Int, UInt64, Int) in
            let whole = raw.count >= FrameHeader.size
            return (
                UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt16.self)), raw[2], raw[3],
                whole ? UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt16.self)) : 0,
                whole ? Int(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 6, as: UInt16.self))) : 0,
                whole ? UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) : 0,
                whole ? Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt32.self))) : 0
            )
        }
        if magic != UInt16(FrameHeader.magic.0) | UInt16(FrameHeader.magic.1) << 8 {
            try Self.checkMagic(buffer, count: 2)
        }
        guard FrameHeader.supportedVersions.contains(version) else {
            throw ProtocolError(
                .unsupportedVersion,
                "frame has protocol version \(version); this side speaks \(FrameHeader.supportedVersions.lowerBound)...\(FrameHeader.supportedVersions.upperBound)"
            )
        }
        guard let kind = FrameKind(rawValue: kindByte) else {
            throw ProtocolError(.unknownFrameKind, "unknown frame kind \(kindByte)")
        }
        guard readable >= FrameHeader.size else { return nil }
        let flags = FrameFlags(rawValue: flagBits)
        guard extensionLength <= self.limits.maxHeaderExtensionSize else {
            throw ProtocolError(
                .extensionTooLarge,
                "\(kind) frame header extension is \(extensionLength) bytes; the limit is \(self.limits.maxHeaderExtensionSize)"
            )
        }
        guard payloadLength <= self.limits.maxFrameSize else {
            throw ProtocolError(
                .frameTooLarge,
                "\(kind) frame announces a \(payloadLength)-byte payload; the maximum frame size is \(self.limits.maxFrameSize) bytes"
            )
        }
        guard readable >= FrameHeader.size + extensionLength + payloadLength else { return nil }

        // Slices taken where they lie, then one move of the reader index: each
        // access to the buffer costs checks that outweigh a small frame's parsing.
        let start = buffer.readerIndex + FrameHeader.size
        let payload = buffer.getSlice(at: start + extensionLength, length: payloadLength)!
        guard extensionLength > 0 else {
            // Most frames: no extension to slice and parse.
            buffer.moveReaderIndex(forwardBy: FrameHeader.size + payloadLength)
            // Built where it is returned: a frame built, then given its size, was
            // copied whole into the result and destroyed (a fifth of a stream
            // consumer's time went to copying frames).
            return Frame(kind: kind, flags: flags, id: id, payload: payload, wireSize: FrameHeader.size + payloadLength)
        }
        var extensionBytes = buffer.getSlice(at: start, length: extensionLength)!
        buffer.moveReaderIndex(forwardBy: FrameHeader.size + extensionLength + payloadLength)
        var frame = Frame(kind: kind, flags: flags, id: id, payload: payload)
        frame.wireSize = FrameHeader.size + extensionLength + payloadLength
        try Self.parseExtension(&extensionBytes, into: &frame)
        return frame
    }

    /// How many more bytes the frame at the front of `buffer` needs to be whole:
    /// the rest of the fixed header while that is incomplete, then the rest of
    /// the extension and payload the header announces; 0 once it is whole.
    ///
    /// Lets a reader complete a frame cut by the end of one read with just the
    /// bytes it lacks, and decode the rest of the next read where it lies. The
    /// announced lengths are not checked here: ``next(from:)`` checks them.
    public static func bytesMissing(in buffer: ByteBuffer) -> Int {
        let readable = buffer.readableBytes
        guard readable >= FrameHeader.size else { return FrameHeader.size - readable }
        let base = buffer.readerIndex
        let extensionLength = Int(buffer.getInteger(at: base + 6, endianness: .little, as: UInt16.self)!)
        let payloadLength = Int(buffer.getInteger(at: base + 16, endianness: .little, as: UInt32.self)!)
        return max(0, FrameHeader.size + extensionLength + payloadLength - readable)
    }

    private static func checkMagic(_ buffer: ByteBuffer, count: Int) throws(ProtocolError) {
        let base = buffer.readerIndex
        let first = buffer.getInteger(at: base, as: UInt8.self)!
        let second = count >= 2 ? buffer.getInteger(at: base + 1, as: UInt8.self)! : FrameHeader.magic.1
        guard first == FrameHeader.magic.0, second == FrameHeader.magic.1 else {
            throw ProtocolError(
                .badMagic,
                "stream does not start with the Intercom magic 'IC' (got 0x\(String(first, radix: 16)) 0x\(String(second, radix: 16))); the peer is not speaking Intercom"
            )
        }
    }

    private static func parseExtension(_ bytes: inout ByteBuffer, into frame: inout Frame) throws(ProtocolError) {
        while bytes.readableBytes > 0 {
            guard let tag = bytes.readInteger(as: UInt8.self),
                let length = bytes.readInteger(endianness: .little, as: UInt16.self),
                var value = bytes.readSlice(length: Int(length))
            else {
                throw ProtocolError(.malformedExtension, "\(frame.kind) frame header extension ends inside a field")
            }
            switch tag {
            case FrameHeader.ExtensionTag.method:
                guard let method = String(validating: value.readableBytesView, as: UTF8.self) else {
                    throw ProtocolError(.malformedExtension, "\(frame.kind) frame method name is not valid UTF-8")
                }
                frame.method = method
            case FrameHeader.ExtensionTag.timeout:
                guard length == 8, let ns = value.readInteger(endianness: .little, as: UInt64.self) else {
                    throw ProtocolError(.malformedExtension, "\(frame.kind) frame timeout field is \(length) bytes, not 8")
                }
                frame.timeout = .nanoseconds(Int64(clamping: ns))
            case FrameHeader.ExtensionTag.traceContext:
                var context: [String: String] = [:]
                while value.readableBytes > 0 {
                    guard let keyLength = value.readInteger(as: UInt8.self),
                        let key = value.readString(length: Int(keyLength)),
                        let entryLength = value.readInteger(endianness: .little, as: UInt16.self),
                        let entry = value.readString(length: Int(entryLength))
                    else {
                        throw ProtocolError(.malformedExtension, "\(frame.kind) frame trace context ends inside an entry")
                    }
                    context[key] = entry
                }
                frame.traceContext = context
            default:
                // Unknown fields are skipped: later versions may add fields.
                continue
            }
        }
    }
}
