// Coverage-guided fuzz targets for every decoder that reads a stranger's bytes
// (libFuzzer, which ships with the Swift toolchain). Built and run by
// Scripts/fuzz.sh; the target is chosen with INTERCOM_FUZZ_TARGET:
//   frame   the frame decoder, fed the input as a byte stream
//   hello   a hello payload
//   error   an error-frame payload
//   binary  the binary Codable decoder, into several nested shapes
//   json    the JSON payload path (the JSON codec and JSONValue)
//   ring    the shared-memory ring reader over a region a hostile writer filled
// A finding is a crash, a sanitizer report or a hang; every decoder must only
// ever throw its typed error.
import Foundation
import Intercom
import IntercomWire
import NIOCore

struct Shape: Codable {
    enum Kind: Codable { case plain, tagged(String, Int), nested(Inner?) }
    struct Inner: Codable {
        var numbers: [Int64]
        var map: [String: Double]
        var flag: Bool?
    }
    var name: String
    var bytes: [UInt8]
    var kind: Kind
    var inner: Inner
    var list: [Inner]
    var date: Date?
    var unsigned: UInt16
}

private enum Target: String {
    case frame, hello, error, binary, json, ring
}

private let target = Target(rawValue: ProcessInfo.processInfo.environment["INTERCOM_FUZZ_TARGET"] ?? "frame") ?? .frame
private let limits = WireLimits.defaults

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: count == 0 ? nil : start, count: count)
    var buffer = ByteBuffer(bytes: bytes)
    switch target {
    case .frame:
        let decoder = FrameDecoder(limits: limits)
        while let frame = try? decoder.next(from: &buffer) { _ = frame.payload.readableBytes }
    case .hello:
        if let hello = try? Hello(from: buffer) {
            _ = try? Hello(maxFrameSize: 1 << 20, pid: 1, name: "fuzz").negotiate(with: hello)
        }
    case .error:
        _ = try? ErrorBody(from: buffer)
    case .binary:
        let decoder = BinaryDecoder(limits: limits)
        _ = try? decoder.decode(Shape.self, from: buffer)
        _ = try? decoder.decode([String: [Int]].self, from: buffer)
        _ = try? decoder.decode(String?.self, from: buffer)
        _ = try? decoder.decode(ByteBuffer.self, from: buffer)
    case .json:
        let codec = PayloadCodec.json(limits: limits)
        _ = try? codec.decode(JSONValue.self, from: buffer)
        _ = try? codec.decode(Shape.self, from: buffer)
    case .ring:
        fuzzRing(bytes)
    }
    return 0
}

/// A region laid out as a ring by its writer, then overwritten by the input
/// (a hostile writer controls every byte of the shared memory): reading must
/// give records or a ``ProtocolError``, never touch memory outside the region.
private func fuzzRing(_ bytes: UnsafeRawBufferPointer) {
    let capacity = 4096
    let size = SharedMemoryRing.size(capacity: capacity)
    let region = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
    defer { region.deallocate() }
    _ = SharedMemoryRing.create(at: region, capacity: capacity)
    // The input overwrites the region from its start (header words included).
    if let source = bytes.baseAddress { memcpy(region, source, min(bytes.count, size)) }
    guard let ring = try? SharedMemoryRing.open(at: region, size: size) else { return }
    var state = SharedMemoryRing.ReaderState()
    for _ in 0..<64 {
        guard let record = try? ring.tryRead(state: &state) else { return }
        _ = record.count
    }
}

#if INTERCOM_FUZZING
/// libFuzzer's entry when the program keeps its own `main` (SwiftPM names every
/// executable's entry point itself).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafeRawPointer?, Int) -> CInt
) -> CInt

@main
struct FuzzMain {
    static func main() {
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        let status = runFuzzerDriver(&argc, &argv) { data, count in
            fuzz(data ?? UnsafeRawPointer(bitPattern: 1)!, count)
        }
        exit(status)
    }
}
#else
/// Without libFuzzer (a plain `swift build`): a program that says how to fuzz.
@main
struct FuzzUsage {
    static func main() {
        print("build and run the fuzz targets with Scripts/fuzz.sh")
    }
}
#endif
