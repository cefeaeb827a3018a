import Foundation
public import Intercom
#if canImport(Glibc)
import Glibc
#endif

/// Text and a descriptor, both ways: a pipe's read end the helper filled, or a
/// pipe's write end the helper is to fill.
public struct TextAndFile: Codable, Sendable {
    public var text: String
    public var file: UnixDescriptor
    public init(text: String, file: UnixDescriptor) {
        self.text = text
        self.file = file
    }
}

/// Many descriptors in one value (for the per-frame limit).
public struct ManyFiles: Codable, Sendable {
    public var files: [UnixDescriptor]
    public init(files: [UnixDescriptor]) { self.files = files }
}

/// The descriptor methods:
/// - `fd.pipe` TEXT: a pipe's read end with TEXT written into it (and the write end closed);
/// - `fd.write` {text, file}: writes text into the descriptor and closes it; the byte count;
/// - `fd.note` (one-way) {text, file}: the same, as a message;
/// - `fd.pipes` N (stream): N read ends, the k-th holding "item k";
/// - `fd.pipes.batched`: fails (`send(contentsOf:)` cannot carry descriptors);
/// - `fd.count` (ignored): how many descriptors this process holds open;
/// - `fd.many` {files}: how many arrived (closing them).
func registerDescriptorHandlers(on router: Router) throws {
    try router.register("fd.pipe") { (text: String, _: CallContext) -> TextAndFile in
        TextAndFile(text: text, file: try filledPipe(text))
    }
    try router.register("fd.write") { (request: TextAndFile, _: CallContext) -> Int in
        writeAndClose(request)
    }
    try router.register("fd.note") { (request: TextAndFile, _: CallContext) in
        _ = writeAndClose(request)
    }
    try router.registerStream("fd.pipes") { (n: Int, _: CallContext, out: StreamWriter<TextAndFile>) in
        for k in 0..<n { try await out.send(TextAndFile(text: "item \(k)", file: try filledPipe("item \(k)"))) }
    }
    // Batches cannot carry descriptors: the handler's error says to send them one by one.
    try router.registerStream("fd.pipes.batched") { (_: Int, _: CallContext, out: StreamWriter<TextAndFile>) in
        try await out.send(contentsOf: [TextAndFile(text: "batched", file: try filledPipe("batched"))])
    }
    try router.register("fd.count") { (_: Int, _: CallContext) -> Int in
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
    }
    try router.register("fd.many") { (request: ManyFiles, _: CallContext) -> Int in request.files.count }
}

/// A pipe's read end with `text` in it and its write end closed.
func filledPipe(_ text: String) throws -> UnixDescriptor {
    var ends: [Int32] = [-1, -1]
    guard pipe(&ends) == 0 else { throw HelperError.refused(reason: "pipe", code: Int(errno)) }
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(ends[1], $0.baseAddress, $0.count) }
    close(ends[1])
    return UnixDescriptor(taking: ends[0])
}

/// Writes the request's text into its descriptor and closes it; the bytes written.
func writeAndClose(_ request: TextAndFile) -> Int {
    let fd = request.file.take()
    defer { close(fd) }
    let bytes = Array(request.text.utf8)
    return bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}
