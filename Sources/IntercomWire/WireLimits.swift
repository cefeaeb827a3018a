/// Limits enforced on everything read from a peer.
///
/// The defaults suit most services; raise ``maxFrameSize`` for bulk transfers.
/// A frame whose header announces more than ``maxFrameSize`` payload bytes is
/// refused from the header alone, before any memory is allocated for it.
public struct WireLimits: Hashable, Sendable {
    /// Largest payload accepted in one frame, in bytes. Default 64 MiB.
    public var maxFrameSize: Int
    /// Largest header extension (method name, deadline, …), in bytes. Default 4 KiB.
    public var maxHeaderExtensionSize: Int
    /// Deepest nesting of containers the binary decoder accepts. Default 64.
    public var maxNestingDepth: Int
    /// Longest string the binary decoder accepts, in UTF-8 bytes. Default 16 MiB.
    public var maxStringLength: Int
    /// Most elements in one collection the binary decoder accepts. Default 16 Mi.
    public var maxCollectionCount: Int

    /// Creates limits; every parameter defaults to the documented default.
    public init(
        maxFrameSize: Int = 64 << 20,
        maxHeaderExtensionSize: Int = 4096,
        maxNestingDepth: Int = 64,
        maxStringLength: Int = 16 << 20,
        maxCollectionCount: Int = 16 << 20
    ) {
        self.maxFrameSize = maxFrameSize
        self.maxHeaderExtensionSize = maxHeaderExtensionSize
        self.maxNestingDepth = maxNestingDepth
        self.maxStringLength = maxStringLength
        self.maxCollectionCount = maxCollectionCount
    }

    /// The documented defaults.
    public static var defaults: WireLimits { WireLimits() }

    /// The defaults, changed by `configure`.
    public static func defaults(configure: (inout WireLimits) -> Void) -> WireLimits {
        var limits = WireLimits()
        configure(&limits)
        return limits
    }
}
