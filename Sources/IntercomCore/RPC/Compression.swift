internal import IntercomWire
internal import CompressNIO
internal import NIOCore

/// Compression of the payloads a side sends (epyrpc's compression): raw
/// deflate (zlib, through compress-nio), for payloads of at least
/// ``threshold`` bytes, and only when the result is smaller. Every peer can
/// read compressed frames (it says so in its hello); each side decides for
/// what it sends. Worth it across hosts for compressible data (JSON-like
/// values, text, sparse arrays); on one host, and for data that is already
/// compressed, it only costs time — BENCHMARKS.md, "Compression", has the figures.
///
/// ```swift
/// configuration.compression = .deflate(threshold: 4096)
/// ```
///
/// Calls, replies, errors and one-way messages are compressed; stream items
/// are not (their flow control counts the bytes on the wire), nor are events.
///
/// Under TLS, a compressed frame's size depends on its content: do not compress
/// payloads that mix a secret with data an attacker chooses (the CRIME/BREACH
/// attacks; docs/DEPLOYMENT.md, section 4).
public struct Compression: Sendable, Hashable {
    /// Whether payloads are compressed at all.
    public var isEnabled: Bool
    /// The smallest payload compressed, in bytes.
    public var threshold: Int
    /// zlib's level, 1 (fastest) to 9 (smallest).
    public var level: Int

    /// Nothing is compressed (the default).
    public static let off = Compression(isEnabled: false, threshold: .max, level: 1)

    /// Payloads of at least `threshold` bytes are compressed at `level` (1–9).
    public static func deflate(threshold: Int = 1024, level: Int = 1) -> Compression {
        Compression(isEnabled: true, threshold: max(threshold, 1), level: min(max(level, 1), 9))
    }

    /// How much of a large payload is tried first: deflate gives up on random
    /// data at ~30 MB/s, so a payload whose start does not shrink is sent as it is.
    static let sampleSize = 8 << 10

    /// Compresses `payload`; nil unless the result saves at least 1/16 of it.
    func compress(_ payload: ByteBuffer) -> ByteBuffer? {
        let algorithm = CompressionAlgorithm.deflate(configuration: ZlibConfiguration(compressionLevel: Int32(self.level)))
        if payload.readableBytes >= 4 * Self.sampleSize {
            var sample = payload.getSlice(at: payload.readerIndex, length: Self.sampleSize)!
            guard let compressed = try? sample.compress(with: algorithm),
                compressed.readableBytes < Self.sampleSize - Self.sampleSize / 16
            else { return nil }
        }
        var input = payload
        guard let compressed = try? input.compress(with: algorithm),
            compressed.readableBytes < payload.readableBytes - payload.readableBytes / 16
        else { return nil }
        return compressed
    }

    /// Decompresses a received payload of at most `limit` bytes once decompressed.
    ///
    /// - Throws: ``ProtocolError`` if the data is not raw deflate or would exceed `limit`.
    static func decompress(_ payload: ByteBuffer, limit: Int) throws(ProtocolError) -> ByteBuffer {
        var input = payload
        do {
            return try input.decompress(with: .deflate(), maxSize: limit)
        } catch {
            throw ProtocolError(
                .malformedHeader,
                "a compressed payload of \(payload.readableBytes) bytes does not decompress within this side's \(limit)-byte maximum frame size (\(error))")
        }
    }
}
