public import NIOCore

/// The handshake both sides send first on every connection (a `hello` frame).
///
/// The handshake is symmetric: each side sends its hello and reads the other's,
/// then both apply ``negotiate(with:)`` and reach the same result, so neither side
/// needs to know whether it "connected" or "accepted". See docs/PROTOCOL.md.
public struct Hello: Hashable, Sendable {
    /// Lowest protocol version this side speaks.
    public var minVersion: UInt8
    /// Highest protocol version this side speaks.
    public var maxVersion: UInt8
    /// The codec this side would like payloads in.
    public var preferredCodec: CodecID
    /// Every codec this side can read and write.
    public var supportedCodecs: Set<CodecID>
    /// Largest payload this side accepts; the other side must not send more.
    public var maxFrameSize: UInt32
    /// The sender's process id.
    public var pid: UInt32
    /// Capability bits (unknown bits are ignored): ``sharedMemoryCapability``, ``streamsCapability``, ``inputStreamsCapability``.
    public var capabilities: UInt64

    /// Capability bit 0: this side can move the connection onto shared-memory
    /// rings and will, if the other side sets it too.
    public static let sharedMemoryCapability: UInt64 = 1 << 0
    /// Capability bit 1: this side understands streams (`streamItem` and
    /// `credit` frames, the `stream` flag on calls).
    public static let streamsCapability: UInt64 = 1 << 1
    /// Capability bit 2: this side understands input streams (the `inputStream`
    /// flag and `streamEnd` frames): client-streaming and bidirectional calls.
    public static let inputStreamsCapability: UInt64 = 1 << 2
    /// Capability bit 3: this side can receive descriptors once the connection
    /// moved to shared memory (its ring offer then carries a descriptor socket).
    public static let descriptorsCapability: UInt64 = 1 << 3
    /// Capability bit 4: told that the other side suspends (a `goodbye` with id
    /// ``suspendingGoodbyeID``), this side makes no more calls on the connection
    /// and closes it once every call it made is answered.
    public static let suspendCapability: UInt64 = 1 << 4
    /// Capability bit 5: this side reads frames flagged ``FrameFlags/compressed``
    /// (raw deflate), whose decompressed payload is bounded by its maximum frame size.
    public static let compressionCapability: UInt64 = 1 << 5
    /// The id of a `goodbye` that says "suspending: I restart on purpose and come
    /// back; finish your calls and close" (a plain goodbye has id 0).
    public static let suspendingGoodbyeID: UInt64 = 1
    /// The id of the `sharedMemory` frame that says "ready" (step 1 of the
    /// upgrade, docs/PROTOCOL.md), the one that may still come through the socket's
    /// normal reading.
    public static let sharedMemoryReadyID: UInt64 = 1
    /// The sender's name: a service name, a role, or the executable's name.
    public var name: String
    /// The names of the sender's custom codecs (``CustomPayloadCodec``), most
    /// preferred first; sent after the name only when there are any (a peer
    /// that knows nothing of them ignores the trailing bytes).
    public var customCodecs: [String] = []

    /// At most this many custom codec names in a hello, each at most ``maxCustomCodecNameLength`` bytes.
    public static let maxCustomCodecs = 8
    /// Longest custom codec name, in UTF-8 bytes.
    public static let maxCustomCodecNameLength = 64

    /// Creates a hello.
    public init(
        minVersion: UInt8 = FrameHeader.supportedVersions.lowerBound,
        maxVersion: UInt8 = FrameHeader.supportedVersions.upperBound,
        preferredCodec: CodecID = .binary,
        supportedCodecs: Set<CodecID> = [.binary, .json],
        maxFrameSize: UInt32,
        pid: UInt32,
        capabilities: UInt64 = 0,
        name: String
    ) {
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.preferredCodec = preferredCodec
        self.supportedCodecs = supportedCodecs
        self.maxFrameSize = maxFrameSize
        self.pid = pid
        self.capabilities = capabilities
        self.name = name
    }

    /// Longest peer name accepted, in UTF-8 bytes.
    public static let maxNameLength = 1024

    /// Writes the hello payload (not the frame header).
    public func write(into buffer: inout ByteBuffer) {
        buffer.writeInteger(self.minVersion)
        buffer.writeInteger(self.maxVersion)
        buffer.writeInteger(self.preferredCodec.rawValue)
        var mask: UInt8 = 0
        for codec in self.supportedCodecs where codec.rawValue < 8 { mask |= 1 << codec.rawValue }
        buffer.writeInteger(mask)
        buffer.writeInteger(self.maxFrameSize, endianness: .little)
        buffer.writeInteger(self.pid, endianness: .little)
        buffer.writeInteger(self.capabilities, endianness: .little)
        let name = self.name.utf8.count <= Self.maxNameLength ? self.name : String(self.name.prefix(256))
        buffer.writeInteger(UInt16(name.utf8.count), endianness: .little)
        buffer.writeString(name)
        let custom = self.customCodecs.filter { !$0.isEmpty && $0.utf8.count <= Self.maxCustomCodecNameLength }
            .prefix(Self.maxCustomCodecs)
        if !custom.isEmpty {
            buffer.writeInteger(UInt8(custom.count))
            for codec in custom {
                buffer.writeInteger(UInt8(codec.utf8.count))
                buffer.writeString(codec)
            }
        }
    }

    /// Parses a hello payload.
    ///
    /// - Throws: ``ProtocolError/Code/malformedHandshake`` if the payload is short,
    ///   over-long or its name is not UTF-8.
    public init(from payload: ByteBuffer) throws(ProtocolError) {
        var buffer = payload
        guard let minVersion = buffer.readInteger(as: UInt8.self),
            let maxVersion = buffer.readInteger(as: UInt8.self),
            let preferred = buffer.readInteger(as: UInt8.self),
            let mask = buffer.readInteger(as: UInt8.self),
            let maxFrameSize = buffer.readInteger(endianness: .little, as: UInt32.self),
            let pid = buffer.readInteger(endianness: .little, as: UInt32.self),
            let capabilities = buffer.readInteger(endianness: .little, as: UInt64.self),
            let nameLength = buffer.readInteger(endianness: .little, as: UInt16.self),
            Int(nameLength) <= Self.maxNameLength,
            let nameBytes = buffer.readSlice(length: Int(nameLength)),
            let name = String(validating: nameBytes.readableBytesView, as: UTF8.self)
        else {
            throw ProtocolError(.malformedHandshake, "hello payload of \(payload.readableBytes) bytes does not parse")
        }
        guard minVersion <= maxVersion else {
            throw ProtocolError(.malformedHandshake, "hello offers versions \(minVersion)...\(maxVersion), an empty range")
        }
        var codecs = Set<CodecID>()
        for bit in 0..<8 where mask & (1 << bit) != 0 { codecs.insert(CodecID(rawValue: UInt8(bit))) }
        var custom: [String] = []
        if let count = buffer.readInteger(as: UInt8.self) {
            guard count >= 1, Int(count) <= Self.maxCustomCodecs else {
                throw ProtocolError(.malformedHandshake, "hello lists \(count) custom codecs (1 to \(Self.maxCustomCodecs) allowed)")
            }
            for _ in 0..<count {
                guard let length = buffer.readInteger(as: UInt8.self), length >= 1,
                    Int(length) <= Self.maxCustomCodecNameLength,
                    let bytes = buffer.readSlice(length: Int(length)),
                    let codec = String(validating: bytes.readableBytesView, as: UTF8.self)
                else {
                    throw ProtocolError(.malformedHandshake, "hello's custom codec names do not parse (1 to \(Self.maxCustomCodecNameLength) bytes of UTF-8 each)")
                }
                custom.append(codec)
            }
        }
        self.init(
            minVersion: minVersion, maxVersion: maxVersion, preferredCodec: CodecID(rawValue: preferred),
            supportedCodecs: codecs, maxFrameSize: maxFrameSize, pid: pid, capabilities: capabilities, name: name
        )
        self.customCodecs = custom
    }

    /// What two hellos agree on.
    public struct Agreement: Hashable, Sendable {
        /// The protocol version both speak (the highest common one).
        public var version: UInt8
        /// The payload codec both use.
        public var codec: CodecID
        /// The custom codec's name, when ``codec`` is ``CodecID/custom``.
        public var customCodec: String? = nil
    }

    /// The version and codec this side and `other` agree on; both sides compute the same.
    ///
    /// Codec rule: if both prefer custom codecs (``CodecID/custom``) and list a
    /// name in common, the common name furthest up both lists; otherwise, if both
    /// prefer the same built-in codec, that one; otherwise the lowest numbered
    /// built-in codec both support (binary before JSON).
    /// - Throws: ``ProtocolError/Code/incompatiblePeer`` naming both sides' offers.
    public func negotiate(with other: Hello) throws(ProtocolError) -> Agreement {
        let high = min(self.maxVersion, other.maxVersion)
        guard high >= max(self.minVersion, other.minVersion) else {
            throw ProtocolError(
                .incompatiblePeer,
                "no common protocol version: this side speaks \(self.minVersion)...\(self.maxVersion), peer '\(other.name)' (pid \(other.pid)) speaks \(other.minVersion)...\(other.maxVersion); upgrade the older side"
            )
        }
        // Custom codecs only when both sides prefer theirs: the shared name that is
        // furthest up both lists (ties: the first by name), the same from either side.
        if self.preferredCodec == .custom, other.preferredCodec == .custom {
            let shared = self.customCodecs.enumerated().compactMap { index, name -> (rank: Int, name: String)? in
                other.customCodecs.firstIndex(of: name).map { (max(index, $0), name) }
            }
            if let pick = shared.min(by: { $0.rank != $1.rank ? $0.rank < $1.rank : $0.name < $1.name }) {
                return Agreement(version: high, codec: .custom, customCodec: pick.name)
            }
        }
        let common = self.supportedCodecs.intersection(other.supportedCodecs)
        let codec: CodecID
        if self.preferredCodec == other.preferredCodec, common.contains(self.preferredCodec) {
            codec = self.preferredCodec
        } else if let lowest = common.min(by: { $0.rawValue < $1.rawValue }) {
            codec = lowest
        } else {
            throw ProtocolError(
                .incompatiblePeer,
                "no common codec: this side supports \(self.supportedCodecs.map(\.description).sorted()), peer '\(other.name)' supports \(other.supportedCodecs.map(\.description).sorted())"
            )
        }
        return Agreement(version: high, codec: codec)
    }
}
