public import NIOCore

/// Flags carried in bytes 4–5 of the frame header.
public struct FrameFlags: OptionSet, Hashable, Sendable {
    /// The flag bits.
    public let rawValue: UInt16
    /// Flags from their bits.
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The payload is raw bytes, not encoded with the connection's codec.
    public static let rawPayload = FrameFlags(rawValue: 1 << 0)
    /// An error frame whose details hold the thrown error encoded with the connection's codec.
    public static let typedError = FrameFlags(rawValue: 1 << 1)
    /// An event frame that carries no event, only the count (in its id) of events
    /// on its topic the publisher had to drop since the last one it sent.
    public static let lagNotice = FrameFlags(rawValue: 1 << 2)
    /// The payload is JSON whatever codec the connection agreed on (a call with
    /// this flag is answered with it too): how tools call typed handlers.
    public static let jsonPayload = FrameFlags(rawValue: 1 << 3)
    /// A call whose caller expects a stream of `streamItem` frames before the
    /// reply, under credit-based flow control (docs/PROTOCOL.md, "Streams").
    public static let stream = FrameFlags(rawValue: 1 << 4)
    /// About the call's *input* stream, the items its caller sends to the callee:
    /// on a call, the caller will send them; on a `streamItem`, the item travels
    /// caller → callee; on a `credit`, the callee grants the caller more
    /// (docs/PROTOCOL.md, "Input streams").
    public static let inputStream = FrameFlags(rawValue: 1 << 5)
    /// Descriptors travel with the frame, beside its bytes (docs/PROTOCOL.md,
    /// "Descriptors"); its payload names them by index.
    public static let descriptors = FrameFlags(rawValue: 1 << 6)
    /// The payload is compressed (raw deflate, RFC 1951); sent only to a peer
    /// whose hello set ``Hello/compressionCapability`` (docs/PROTOCOL.md, "Compression").
    public static let compressed = FrameFlags(rawValue: 1 << 7)
}

/// One decoded frame: the fixed header's fields, the parsed header extension
/// and the payload (a slice of the read buffer, not a copy).
public struct Frame: Sendable {
    /// The frame's kind.
    public var kind: FrameKind
    /// The frame's flags.
    public var flags: FrameFlags
    /// Correlation id: a call's id on its call, reply, error and cancel frames.
    public var id: UInt64
    /// The method (calls, messages) or topic (events, subscriptions), if any.
    public var method: String?
    /// The time the sender allowed for the call when it sent it, if any.
    public var timeout: Duration?
    /// The payload bytes.
    public var payload: ByteBuffer
    /// The frame's size on the wire, header and extension included, as it was
    /// read (0 for a frame built in memory).
    public var wireSize: Int = 0
    /// The descriptors that arrived with it (flag ``FrameFlags/descriptors``),
    /// closed when the last copy of the frame is dropped unless a decoded
    /// ``UnixDescriptor`` took them.
    public var descriptors: ReceivedDescriptors?
    /// The caller's trace context (extension tag 3): what its tracer injected —
    /// W3C `traceparent`/`tracestate` for an OpenTelemetry tracer.
    public var traceContext: [String: String]?

    /// Creates a frame.
    @inlinable
    public init(
        kind: FrameKind,
        flags: FrameFlags = [],
        id: UInt64 = 0,
        method: String? = nil,
        timeout: Duration? = nil,
        payload: ByteBuffer = ByteBuffer()
    ) {
        self.kind = kind
        self.flags = flags
        self.id = id
        self.method = method
        self.timeout = timeout
        self.payload = payload
    }

    /// A frame as read: with its size on the wire.
    init(kind: FrameKind, flags: FrameFlags, id: UInt64, payload: ByteBuffer, wireSize: Int) {
        self.kind = kind
        self.flags = flags
        self.id = id
        self.payload = payload
        self.wireSize = wireSize
    }
}

/// Constants and writing of the fixed frame header (see docs/PROTOCOL.md).
public enum FrameHeader {
    /// `I`, `C`: the first two bytes of every frame.
    public static let magic: (UInt8, UInt8) = (0x49, 0x43)
    /// The protocol versions this build speaks.
    public static let supportedVersions: ClosedRange<UInt8> = 1...1
    /// The version this build writes.
    public static let currentVersion: UInt8 = 1
    /// Size of the fixed header in bytes.
    public static let size = 20

    /// Header-extension field tags.
    enum ExtensionTag {
        static let method: UInt8 = 1
        static let timeout: UInt8 = 2
        static let traceContext: UInt8 = 3
    }

    /// Where a frame under construction started, so its payload length can be patched in.
    public struct Mark: Sendable {
        let start: Int
        /// Where the payload begins in the buffer.
        public let payloadStart: Int
    }

    /// Writes the fixed header and extension of a frame, leaving the payload
    /// length to be filled in by ``finish(_:in:)`` once the payload is written
    /// after it. This lets a frame and its payload be built in one buffer.
    ///
    /// - Precondition: `method` is at most 65,535 UTF-8 bytes (callers check names).
    public static func begin(
        into buffer: inout ByteBuffer,
        kind: FrameKind,
        flags: FrameFlags = [],
        id: UInt64,
        method: String? = nil,
        timeout: Duration? = nil
    ) -> Mark {
        // One bounds check and one exclusive access for the whole header instead of
        // one per field: this function runs once per frame on every hot path.
        let methodLength = method?.utf8.count ?? 0
        let extensionLength = (method == nil ? 0 : 3 + methodLength) + (timeout == nil ? 0 : 11)
        let start = buffer.writerIndex
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Self.size + extensionLength) { raw in
            raw.storeBytes(of: Self.magic.0, toByteOffset: 0, as: UInt8.self)
            raw.storeBytes(of: Self.magic.1, toByteOffset: 1, as: UInt8.self)
            raw.storeBytes(of: Self.currentVersion, toByteOffset: 2, as: UInt8.self)
            raw.storeBytes(of: kind.rawValue, toByteOffset: 3, as: UInt8.self)
            raw.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: 4, as: UInt16.self)
            raw.storeBytes(of: UInt16(truncatingIfNeeded: extensionLength).littleEndian, toByteOffset: 6, as: UInt16.self)
            raw.storeBytes(of: id.littleEndian, toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: UInt32(0), toByteOffset: 16, as: UInt32.self)  // payload length: see finish
            var offset = Self.size
            if var method {
                raw.storeBytes(of: ExtensionTag.method, toByteOffset: offset, as: UInt8.self)
                raw.storeBytes(of: UInt16(truncatingIfNeeded: methodLength).littleEndian, toByteOffset: offset + 1, as: UInt16.self)
                method.withUTF8 { utf8 in
                    UnsafeMutableRawBufferPointer(rebasing: raw[(offset + 3)...]).copyMemory(from: UnsafeRawBufferPointer(utf8))
                }
                offset += 3 + methodLength
            }
            if let timeout {
                raw.storeBytes(of: ExtensionTag.timeout, toByteOffset: offset, as: UInt8.self)
                raw.storeBytes(of: UInt16(8).littleEndian, toByteOffset: offset + 1, as: UInt16.self)
                raw.storeBytes(
                    of: UInt64(clamping: timeout.nanosecondsClamped).littleEndian, toByteOffset: offset + 3, as: UInt64.self)
                offset += 11
            }
            return offset
        }
        return Mark(start: start, payloadStart: buffer.writerIndex)
    }

    /// Appends a whole frame with no header extension whose payload is `bytes`
    /// as the binary codec encodes a byte array (varint length, then the bytes),
    /// in one access to the buffer instead of three (header, payload, length):
    /// what streaming raw chunks costs per item.
    ///
    /// - Returns: the payload length in bytes.
    public static func appendByteArrayFrame(
        into buffer: inout ByteBuffer, kind: FrameKind, flags: FrameFlags, id: UInt64, bytes: UnsafeRawBufferPointer
    ) -> Int {
        var payloadLength = 0
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Self.size + 10 + bytes.count) { raw in
            payloadLength = storeLengthPrefixed(bytes, in: raw, at: Self.size) - Self.size
            raw.storeBytes(of: Self.magic.0, toByteOffset: 0, as: UInt8.self)
            raw.storeBytes(of: Self.magic.1, toByteOffset: 1, as: UInt8.self)
            raw.storeBytes(of: Self.currentVersion, toByteOffset: 2, as: UInt8.self)
            raw.storeBytes(of: kind.rawValue, toByteOffset: 3, as: UInt8.self)
            raw.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: 4, as: UInt16.self)
            raw.storeBytes(of: UInt16(0), toByteOffset: 6, as: UInt16.self)
            raw.storeBytes(of: id.littleEndian, toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: UInt32(truncatingIfNeeded: payloadLength).littleEndian, toByteOffset: 16, as: UInt32.self)
            return Self.size + payloadLength
        }
        return payloadLength
    }

    /// The payload length written in the header of the whole frame at the
    /// start of `frame` (what ``finish(_:in:)`` set): the payload alone, without
    /// the header or its extension.
    public static func payloadLength(ofFrameIn frame: ByteBuffer) -> Int {
        Int(frame.getInteger(at: frame.readerIndex + 16, endianness: .little, as: UInt32.self) ?? 0)
    }

    /// Adds a trace context field (extension tag 3) to the frame begun at
    /// `mark`, before anything of its payload is written: `u8` key length, key,
    /// `u16` value length, value, for each entry (sorted by key). Entries that
    /// would take the field past 1,024 bytes, or keys over 255 bytes, are left out.
    ///
    /// - Returns: the mark to finish the frame with.
    public static func addTraceContext(_ context: [String: String], to mark: Mark, in buffer: inout ByteBuffer) -> Mark {
        precondition(buffer.writerIndex == mark.payloadStart, "the trace context goes before the payload")
        var value = ByteBuffer()
        for (key, entry) in context.sorted(by: { $0.key < $1.key }) {
            let keyLength = key.utf8.count
            let entryLength = entry.utf8.count
            guard keyLength <= 255, value.readableBytes + 3 + keyLength + entryLength <= 1024 else { continue }
            value.writeInteger(UInt8(keyLength))
            value.writeString(key)
            value.writeInteger(UInt16(entryLength), endianness: .little)
            value.writeString(entry)
        }
        guard value.readableBytes > 0 else { return mark }
        buffer.writeInteger(ExtensionTag.traceContext)
        buffer.writeInteger(UInt16(value.readableBytes), endianness: .little)
        buffer.writeBuffer(&value)
        let old = buffer.getInteger(at: mark.start + 6, endianness: .little, as: UInt16.self) ?? 0
        buffer.setInteger(old + UInt16(buffer.writerIndex - mark.payloadStart), at: mark.start + 6, endianness: .little)
        return Mark(start: mark.start, payloadStart: buffer.writerIndex)
    }

    /// Fills in the payload length of the frame begun at `mark`.
    ///
    /// - Returns: the payload length in bytes.
    @discardableResult
    public static func finish(_ mark: Mark, in buffer: inout ByteBuffer) -> Int {
        let length = buffer.writerIndex - mark.payloadStart
        buffer.setInteger(UInt32(truncatingIfNeeded: length), at: mark.start + 16, endianness: .little)
        return length
    }

    /// Replaces the payload written since `mark` with `payload`, adds `flags`
    /// to the header, and sets the length: for a payload transformed after
    /// it was written (compressed).
    public static func replacePayload(_ mark: Mark, in buffer: inout ByteBuffer, with payload: ByteBuffer, adding flags: FrameFlags) {
        buffer.moveWriterIndex(to: mark.payloadStart)
        buffer.writeImmutableBuffer(payload)
        let old = buffer.getInteger(at: mark.start + 4, endianness: .little, as: UInt16.self) ?? 0
        buffer.setInteger(old | flags.rawValue, at: mark.start + 4, endianness: .little)
        Self.finish(mark, in: &buffer)
    }

    /// A frame with no payload and no extension (cancel, ping, pong, goodbye, empty reply).
    public static func empty(kind: FrameKind, id: UInt64) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(Self.size)
        let mark = Self.begin(into: &buffer, kind: kind, id: id)
        Self.finish(mark, in: &buffer)
        return buffer
    }

    /// Appends a whole frame (header, extension, payload) to `buffer`.
    public static func write(_ frame: Frame, into buffer: inout ByteBuffer) {
        var payload = frame.payload
        let mark = Self.begin(
            into: &buffer, kind: frame.kind, flags: frame.flags, id: frame.id,
            method: frame.method, timeout: frame.timeout
        )
        buffer.writeBuffer(&payload)
        Self.finish(mark, in: &buffer)
    }
}

extension Duration {
    /// Nanoseconds, clamped to 0...Int64.max.
    package var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = self.components
        if seconds < 0 { return 0 }
        let (ns, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .max }
        let (total, overflow2) = ns.addingReportingOverflow(attoseconds / 1_000_000_000)
        return overflow2 ? .max : total
    }
}
