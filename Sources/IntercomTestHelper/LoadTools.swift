// The helper's load generators for the scale and churn batteries: idle
// connections, connect-call-close cycles, abrupt clients.
import Dispatch
import Foundation
import CIntercomShims
import Intercom
@_spi(IntercomInternals) import IntercomTransport
import IntercomWire
import Logging
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A raw connection to `path` that says nothing (an idle client).
func idleConnection(to path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    _ = UnixSocket.withAddress(path) { connect(fd, $0, $1) }
    return fd
}

/// `--scale N --serve NAME --bus DIR`: opens 10, then N idle connections to the
/// service and, at each level, times 200 cycles of connect + one `echo` call +
/// close and 200 calls on one open connection. Prints one line per level.
func scale(count: Int, name: String, directory: String) async throws -> Never {
    var limits = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
    limits.rlim_cur = limits.rlim_max
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
    let bus = Bus(directory: directory)
    var idle: [Int32] = []
    for level in [10, count] {
        while idle.count < level { idle.append(idleConnection(to: "\(directory)/\(name).sock")) }
        var connects: [Duration] = []
        for index in 0..<200 {
            let started = ContinuousClock.now
            let peer = try await bus.connect(to: name)
            _ = try await peer.callJSON("echo", json: "\(index)")
            connects.append(ContinuousClock.now - started)
            await peer.close()
        }
        let peer = try await bus.connect(to: name)
        var calls: [Duration] = []
        for index in 0..<200 {
            let started = ContinuousClock.now
            _ = try await peer.callJSON("echo", json: "\(index)")
            calls.append(ContinuousClock.now - started)
        }
        await peer.close()
        connects.sort()
        calls.sort()
        func us(_ duration: Duration) -> Int {
            Int(duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000)
        }
        FileHandle.standardOutput.write(
            Data("idle_connections=\(idle.count) connect_call_median_us=\(us(connects[100])) connect_call_p99_us=\(us(connects[198])) call_median_us=\(us(calls[100]))\n".utf8))
    }
    for fd in idle { close(fd) }
    exit(0)
}

/// `--churn COUNT --serve NAME --bus DIR [--abrupt]`: COUNT cycles of connect,
/// one `echo` call, close — with a goodbye through ``Peer`` (shared memory unless
/// INTERCOM_SHARED_MEMORY=off), or `--abrupt`: a raw socket that greets, calls and
/// closes without a goodbye. `--vanish` exits right after the first call,
/// connection open (over shared memory unless switched off), as a crash would.
/// Prints "churned COUNT" and exits 0.
func churn(count: Int, name: String, directory: String, abrupt: Bool, vanish: Bool) async throws -> Never {
    let bus = Bus(directory: directory)
    for index in 0..<count {
        if abrupt {
            let fd = idleConnection(to: "\(directory)/\(name).sock")
            var frames = ByteBuffer()
            let hello = FrameHeader.begin(into: &frames, kind: .hello, id: 0)
            Hello(preferredCodec: .json, maxFrameSize: 1 << 20, pid: UInt32(getpid()), name: "churn").write(into: &frames)
            FrameHeader.finish(hello, in: &frames)
            let call = FrameHeader.begin(into: &frames, kind: .call, id: 1, method: "echo", timeout: .seconds(5))
            frames.writeString("\(index)")
            FrameHeader.finish(call, in: &frames)
            let bytes = Array(frames.readableBytesView)
            _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            // Read until the reply (hello + reply frames), then vanish without a goodbye.
            var buffer = ByteBuffer()
            var chunk = [UInt8](repeating: 0, count: 4096)
            var seen = 0
            while seen < 2 {
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                buffer.writeBytes(chunk[0..<n])
                while (try? FrameDecoder().next(from: &buffer)) != nil { seen += 1 }
            }
            close(fd)
        } else {
            let peer = try await bus.connect(to: name)
            _ = try await peer.callJSON("echo", json: "\(index)")
            if vanish { _exit(0) }
            await peer.close()
        }
    }
    FileHandle.standardOutput.write(Data("churned \(count)\n".utf8))
    exit(0)
}
