import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
import IntercomWire
import NIOCore
import Testing

@_spi(IntercomInternals) import IntercomTransport

#if canImport(Glibc)
import Glibc
#endif

/// What /proc tells about another process: its CPU time, resident memory,
/// descriptors and mappings.
struct ProcessProbe {
    let pid: Int32

    /// User + system CPU time consumed so far.
    var cpuSeconds: Double {
        guard let text = try? String(contentsOfFile: "/proc/\(self.pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return 0 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // Fields after the command: state is [0]; utime [11], stime [12] (clock ticks).
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Resident memory in bytes.
    var residentBytes: Int {
        guard let text = try? String(contentsOfFile: "/proc/\(self.pid)/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let kilobytes = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
            return kilobytes * 1024
        }
        return 0
    }

    /// How many descriptors are open.
    var openDescriptors: Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(self.pid)/fd")) ?? []).count
    }

    /// How many memory mappings it has (lines of /proc/PID/maps).
    var mappings: Int {
        ((try? String(contentsOfFile: "/proc/\(self.pid)/maps", encoding: .utf8)) ?? "").split(separator: "\n").count
    }

    /// How many of its mappings are of memfd files (the shared-memory regions).
    var sharedMemoryMappings: Int {
        ((try? String(contentsOfFile: "/proc/\(self.pid)/maps", encoding: .utf8)) ?? "")
            .split(separator: "\n").count { $0.contains("/memfd:") }
    }

    var isAlive: Bool { kill(self.pid, 0) == 0 }
}

extension RawClient {
    /// Gives up a blocked send after `seconds` (SO_SNDTIMEO): a peer that stopped reading shows as EAGAIN.
    func setSendTimeout(seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(self.fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// One `send` (no SIGPIPE): the bytes sent, or -errno.
    func sendOnce(_ bytes: [UInt8]) -> Int {
        let sent = bytes.withUnsafeBytes { send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        return sent >= 0 ? sent : -Int(errno)
    }

    /// Sends all of `bytes`; false if the peer stopped reading for the send timeout or closed.
    func sendAll(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += sent
        }
        return true
    }

    /// A call frame to `method` with `argument` in the binary codec.
    static func call<Argument: Encodable>(id: UInt64, _ method: String, _ argument: Argument) throws -> [UInt8] {
        var frame = ByteBuffer()
        let mark = FrameHeader.begin(into: &frame, kind: .call, id: id, method: method, timeout: nil)
        try BinaryEncoder().encode(argument, into: &frame)
        FrameHeader.finish(mark, in: &frame)
        return Array(frame.readableBytesView)
    }
}

/// Waits until `condition` holds of another process (read from /proc, where no
/// event tells of a change), checking every 10 ms; fails after `timeout`.
func observeUntil(
    _ what: String, timeout: Duration, detail: () -> String = { "" }, _ condition: () -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else {
            let seen = detail()
            let message = "timed out waiting until \(what)" + (seen.isEmpty ? "" : ": \(seen)")
            Issue.record(Comment(rawValue: message))
            throw IntercomError(.timeout, message)
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}

/// Raises this process's soft descriptor limit to `wanted` (children inherit it).
func raiseDescriptorLimit(to wanted: Int) {
    var limits = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
    if limits.rlim_cur < rlim_t(wanted) {
        limits.rlim_cur = min(rlim_t(wanted), limits.rlim_max)
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
    }
}

/// The defects an adversary found (issue "Hardening"), each against a real
/// service process and real sockets: many connections, running out of
/// descriptors, protocol violations from a peer that never reads, unread calls
/// past the byte budget, and files the bus did not write.
@Suite(.serialized) struct HardeningTests {
    /// Each new connection used to scan /proc/self/fd (a SIGSEGV at ~730 idle
    /// connections, and connecting grew O(open connections)); now a service holds
    /// 1,000 idle and 300 greeted connections and still answers a normal call.
    @Test func aServiceLivesWithHundredsOfIdleAndGreetedConnections() async throws {
        raiseDescriptorLimit(to: 8192)
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let service = try ServiceProcess(name: "many", bus: temporary)
                _ = try await temporary.bus.waitForService("many", timeout: .seconds(20))
                let path = temporary.directory + "/many.sock"
                var clients: [RawClient] = []
                defer { for client in clients { client.close() } }
                for _ in 0..<1_000 { clients.append(try RawClient(unixPath: path)) }
                var greeted: [RawClient] = []
                for _ in 0..<300 {
                    let client = try RawClient(unixPath: path)
                    client.write(RawClient.hello())
                    greeted.append(client)
                    clients.append(client)
                }
                // Every greeted client was accepted and answered.
                for client in greeted { #expect(client.readFrames(1).first?.kind == .hello) }
                let probe = ProcessProbe(pid: service.pid)
                #expect(probe.isAlive)
                #expect(probe.openDescriptors >= 1_300, "the service holds every connection: \(probe.openDescriptors)")
                let client = try await temporary.bus.connect(to: "many")
                #expect(try await client.call("math.add", AddRequest(a: 2, b: 3), returning: Int.self) == 5)
                #expect(try await client.call("intercom.quit", 0, returning: Bool.self))
                await client.waitUntilClosed()
                #expect(await service.waitForExit() == 0)
            }
        }
    }

    /// With `ulimit -n` exhausted, accepting used to fail at once forever (5 CPU-s
    /// in 5 s). Now accepting pauses and retries; connections already open keep
    /// being served, and new ones are served once descriptors are free again.
    @Test func runningOutOfDescriptorsPausesAcceptingInsteadOfSpinning() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let service = try ServiceProcess(name: "tight", bus: temporary, arguments: ["--nofile", "128"])
                _ = try await temporary.bus.waitForService("tight", timeout: .seconds(20))
                let early = try await temporary.bus.connect(to: "tight")
                let probe = ProcessProbe(pid: service.pid)
                let path = temporary.directory + "/tight.sock"
                var clients: [RawClient] = []
                for _ in 0..<250 { clients.append(try RawClient(unixPath: path)) }
                try await observeUntil("the service ran out of descriptors", timeout: .seconds(20)) { probe.openDescriptors >= 120 }
                // A measuring window, not a synchronisation: a spinning accept loop burns a whole CPU in it.
                let before = probe.cpuSeconds
                try await Task.sleep(for: .seconds(2))
                let used = probe.cpuSeconds - before
                #expect(used < 0.5, "the service used \(used) CPU-s in 2 s while out of descriptors")
                // The connection made before still works.
                #expect(try await early.call("math.add", AddRequest(a: 20, b: 22), returning: Int.self) == 42)
                for client in clients { client.close() }
                // Descriptors are free again: a new client is accepted and served.
                let late = try await temporary.bus.connect(to: "tight")
                #expect(try await late.call("math.add", AddRequest(a: 1, b: 1), returning: Int.self) == 2)
                await late.close()
                #expect(try await early.call("intercom.quit", 0, returning: Bool.self))
                await early.waitUntilClosed()
                #expect(await service.waitForExit() == 0)
            }
        }
    }

    /// A client that sent calls whose replies it never reads, then junk: the
    /// service used to read (and drop) the junk forever while its error frame
    /// waited to be flushed. Now it stops reading and closes within a short grace.
    @Test func aViolationClosesTheConnectionEvenIfThePeerNeverReads() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let service = try ServiceProcess(name: "strict", bus: temporary)
                _ = try await temporary.bus.waitForService("strict", timeout: .seconds(20))
                let raw = try RawClient(unixPath: temporary.directory + "/strict.sock")
                defer { raw.close() }
                raw.setSendTimeout(seconds: 1)
                #expect(raw.sendAll(Array(RawClient.hello().readableBytesView)))
                // 12.8 MB of replies that are never read: the service's writes stall.
                let payload = [UInt8](repeating: 7, count: 64 << 10)
                for id in 1...200 {
                    #expect(raw.sendAll(try RawClient.call(id: UInt64(id), "echo.bytes", payload)))
                }
                let junk = [UInt8](repeating: 0xEE, count: 64 << 10)
                var sent = 0
                var ended: Int?
                let deadline = ContinuousClock.now + .seconds(15)
                while ContinuousClock.now < deadline, sent < 1 << 30 {
                    let result = raw.sendOnce(junk)
                    if result > 0 {
                        sent += result
                    } else if result != -Int(EAGAIN), result != -Int(EINTR) {
                        ended = -result
                        break
                    }
                }
                #expect(ended == Int(EPIPE) || ended == Int(ECONNRESET), "the connection was not closed (errno \(ended.map(String.init) ?? "none"), \(sent) junk bytes taken)")
                #expect(sent < 16 << 20, "the service took \(sent) bytes of junk after the violation")
                // The service carries on.
                let client = try await temporary.bus.connect(to: "strict")
                #expect(try await client.call("math.add", AddRequest(a: 1, b: 2), returning: Int.self) == 3)
                #expect(try await client.call("intercom.quit", 0, returning: Bool.self))
                await client.waitUntilClosed()
                #expect(await service.waitForExit() == 0)
            }
        }
    }

    /// 2 MB calls nobody collects the replies of: the service used to read them
    /// all (2.4 GB for 1,200). Now it stops reading at its byte budget, stays
    /// within it, and gives the memory back when the client goes.
    @Test func unreadCallsStayWithinTheConnectionsByteBudget() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let budget = 8 << 20
                let service = try ServiceProcess(name: "budget", bus: temporary, arguments: ["--request-budget", "\(budget)"])
                _ = try await temporary.bus.waitForService("budget", timeout: .seconds(20))
                let probe = ProcessProbe(pid: service.pid)
                let warm = try await temporary.bus.connect(to: "budget")
                _ = try await warm.call("echo.bytes", [UInt8](repeating: 1, count: 2 << 20), returning: [UInt8].self)
                let baseline = probe.residentBytes
                let raw = try RawClient(unixPath: temporary.directory + "/budget.sock")
                raw.setSendTimeout(seconds: 1)
                #expect(raw.sendAll(Array(RawClient.hello(maxFrameSize: 64 << 20).readableBytesView)))
                let call = [UInt8](repeating: 9, count: 2 << 20)
                // The calls are served (a reply, not an error), just never collected after this one.
                #expect(raw.sendAll(try RawClient.call(id: 1000, "echo.bytes", call)))
                let first = raw.readFrames(2)
                #expect(first.map(\.kind) == [.hello, .reply])
                var accepted = 0
                var blocked = false
                for id in 1...100 {
                    guard raw.sendAll(try RawClient.call(id: UInt64(id), "echo.bytes", call)) else {
                        blocked = true
                        break
                    }
                    accepted += 1
                }
                #expect(blocked, "the service read all \(accepted) calls of 2 MB without stopping")
                let peak = probe.residentBytes
                raw.close()
                // Memory figures hold for normal builds only (a sanitizer's shadow
                // memory or quarantine adds tens of MiB); `blocked` above holds anyway.
                if !ResourceAudit.underSanitizer {
                    let grown = peak - baseline
                    #expect(grown < 3 * budget + (16 << 20), "RSS grew by \(grown >> 20) MiB with a \(budget >> 20) MiB budget")
                    // The budget's worth comes back (malloc keeps a few MiB of arenas per
                    // thread that served the connection; 4.5-6.5 MiB measured alone).
                    try await observeUntil("the memory came back", timeout: .seconds(20)) {
                        probe.residentBytes - baseline < budget + (4 << 20)
                    }
                }
                print("budget test: baseline \(baseline >> 10) KiB, peak \(peak >> 10) KiB, after \(probe.residentBytes >> 10) KiB")
                #expect(try await warm.call("intercom.quit", 0, returning: Bool.self))
                await warm.waitUntilClosed()
                #expect(await service.waitForExit() == 0)
            }
        }
    }

    /// Every connection used to stay in memory after it ended (an unread stream
    /// of accepted peers, a peer/handler cycle, deadline timers left on the event
    /// loop), shared-memory ones with their two mappings: 20 KB and 2 mappings
    /// per cycle. Now descriptors and mappings return to their baseline and
    /// memory stays flat.
    @Test(arguments: [true, false]) func connectionsLeaveNothingBehindWhenTheyEnd(sharedMemory: Bool) async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let service = try ServiceProcess(name: "churn", bus: temporary)
                _ = try await temporary.bus.waitForService("churn", timeout: .seconds(20))
                let probe = ProcessProbe(pid: service.pid)
                var configuration = ChildProcess.configuration()
                configuration.sharedMemory.isEnabled = sharedMemory
                func cycles(_ count: Int) async throws {
                    for index in 0..<count {
                        let peer = try await temporary.bus.connect(to: "churn", configuration: configuration)
                        #expect(peer.isSharedMemory == sharedMemory)
                        #expect(try await peer.call("math.add", AddRequest(a: index, b: 1), returning: Int.self) == index + 1)
                        await peer.close()
                    }
                }
                try await cycles(50)  // warm-up: lazily made runtime state is not growth
                let (descriptors, mappings, regions, resident) =
                    (probe.openDescriptors, probe.mappings, probe.sharedMemoryMappings, probe.residentBytes)
                try await cycles(400)
                // Shared-memory regions and descriptors come back exactly. Other
                // mappings need not: glibc keeps the stacks of ended threads (each
                // shared-memory connection has one) for reuse and gives a thread that
                // meets a busy arena a new malloc arena; how many depends on how
                // threads overlapped. On a loaded machine 3 more were seen over
                // sockets alone (CI failed on `<=` baseline). A leak was 2 mappings
                // per cycle: 800 here.
                let stackCacheSlack = 16
                try await observeUntil(
                    "the service closed the last connections",
                    timeout: .seconds(20),
                    detail: {
                        "descriptors \(probe.openDescriptors) (baseline \(descriptors)), memfd mappings \(probe.sharedMemoryMappings) "
                            + "(baseline \(regions)), mappings \(probe.mappings) (baseline \(mappings) + \(stackCacheSlack))"
                    }
                ) {
                    probe.openDescriptors <= descriptors && probe.sharedMemoryMappings <= regions
                        && probe.mappings <= mappings + stackCacheSlack
                }
                // Memory figures hold for normal builds only: under ThreadSanitizer the
                // service also grows shadow memory (+5 to 6.5 MiB here), under
                // AddressSanitizer freed memory waits in quarantine (+35 to 47 MiB).
                if !ResourceAudit.underSanitizer {
                    let grown = probe.residentBytes - resident
                    #expect(grown < 2 << 20, "RSS grew \(grown >> 10) KiB over 400 cycles")
                }
                let client = try await temporary.bus.connect(to: "churn")
                #expect(try await client.call("intercom.quit", 0, returning: Bool.self))
                await client.waitUntilClosed()
                #expect(await service.waitForExit() == 0)
            }
        }
    }

    /// In one process: every peer, on both ends, is released once its connection
    /// closed (weak references go nil), whether or not anyone read the listener's
    /// stream of peers.
    @Test(arguments: [true, false]) func closedPeersAreReleasedOnBothEnds(sharedMemory: Bool) async throws {
        try await withResourceCheck {
            let path = TemporaryDirectory.shared.socketPath()
            var configuration = Peer.Configuration()
            configuration.sharedMemory.isEnabled = sharedMemory
            let router = Router()
            try router.register("echo") { (value: Int, _: CallContext) in value }
            let listener = try await PeerListener.listen(unixPath: path, router: router, configuration: configuration)
            final class Weak: @unchecked Sendable { weak var peer: Peer?; init(_ peer: Peer) { self.peer = peer } }
            var weak: [Weak] = []
            for index in 0..<20 {
                let peer = try await Peer.connect(unixPath: path, configuration: configuration)
                #expect(try await peer.call("echo", index, returning: Int.self) == index)
                weak.append(Weak(peer))
                for server in listener.connectedPeers { weak.append(Weak(server)) }
                await peer.close()
            }
            try await observeUntil("every closed peer is released", timeout: .seconds(20)) {
                weak.allSatisfy { $0.peer == nil }
            }
            await listener.close()
        }
    }

    /// `close()` used to leave connections still in their handshake open until
    /// the handshake timed out (10 s): clients that never sent a hello kept
    /// their sockets, and a resource audit right after saw them. Now, once
    /// `close()` returns, every connection it had is closed.
    @Test func closingAListenerClosesConnectionsStillInTheirHandshake() async throws {
        try await withResourceCheck {
            let path = TemporaryDirectory.shared.socketPath()
            let router = Router()
            try router.register("echo") { (value: Int, _: CallContext) in value }
            let listener = try await PeerListener.listen(unixPath: path, router: router)
            let silent = try (0..<20).map { _ in try RawClient(unixPath: path) }
            defer { for client in silent { client.close() } }
            // Accepted in order: once this client is answered, the silent ones before it were accepted.
            let peer = try await Peer.connect(unixPath: path)
            #expect(try await peer.call("echo", 7, returning: Int.self) == 7)
            await listener.close()
            for (index, client) in silent.enumerated() {
                // Past the service's hello: end of stream (or a reset, for one closed
                // before it was accepted) means closed; EAGAIN means still open.
                var buffer = [UInt8](repeating: 0, count: 4096)
                var result = 0
                repeat {
                    result = buffer.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                } while result > 0
                let closed = result == 0 || errno == ECONNRESET
                #expect(closed, "silent client \(index) is still connected (errno \(errno))")
            }
            await peer.waitUntilClosed()
        }
    }

    /// One-way messages nobody receives were bounded by count only (1,024 ×
    /// frame size): a child that never reads its inbox, allowed 100,000 messages
    /// but 2 MiB, makes the sender of 256 KiB messages wait after a few MiB.
    @Test(arguments: [TransportKind.socketpair, .sharedMemory])
    func unreadMessagesStayWithinTheInboxByteBound(kind: TransportKind) async throws {
        try await withResourceCheck {
            let configuration = ChildProcess.configuration {
                $0.outboundHighWatermark = 64 << 10
                $0.outboundLowWatermark = 16 << 10
                // Over shared memory, large frames in flight also fill this side's
                // buffer pool (32 MiB by default): keep it small so the bound shows.
                $0.sharedMemory.bufferPoolSize = 4 << 20
            }
            let child = try await ChildProcess.spawn(
                kind, arguments: ["--stall", "--inbox-messages", "100000", "--inbox-bytes", "\(2 << 20)"],
                configuration: configuration)
            let peer = child.peer
            let sent = Locked(0)
            let text = String(repeating: "y", count: 256 << 10)
            let sender = Task {
                for index in 0..<200 {  // 50 MiB offered
                    try await peer.send(Note(index: index, text: text))
                    sent.withLock { $0 += 1 }
                }
            }
            try await observeUntil("the sender is held back", timeout: .seconds(30)) { peer.statistics.blockedSenders == 1 }
            let accepted = sent.withLock { $0 }
            #expect(accepted * (256 << 10) < 16 << 20, "accepted \(accepted) messages of 256 KiB before blocking")
            child.kill(SIGUSR1)  // the child starts reading: everything arrives
            try await sender.value
            try await peer.send(Note(index: -1, text: "count?"))
            var count = 0
            while count == 0 {
                let message = try await peer.receiveMessage(timeout: .seconds(30))
                if message.method == "count" { count = try message.decode(as: Int.self) }
            }
            #expect(count == 201, "nothing was lost")
            await child.shutdown()
        }
    }

    /// `intercom list` and a call to a missing service used to unlink every
    /// `*.json` without a held lock — the user's own files too.
    @Test func lookingUpServicesNeverDeletesFilesTheBusDidNotWrite() async throws {
        try await withResourceCheck {
            try await withTemporaryBus(expectEmpty: false) { temporary in
                let mine = ["settings.json", "notes.json", "readme.txt", ".hidden.json"]
                for file in mine {
                    #expect(FileManager.default.createFile(atPath: temporary.directory + "/" + file, contents: Data("{}".utf8)))
                }
                #expect(try temporary.bus.services().isEmpty)
                #expect(try temporary.bus.service(named: "settings") == nil)
                await expectIntercomError(.serviceNotFound) { _ = try await temporary.bus.connect(to: "settings") }
                await expectIntercomError(.serviceNotFound) { _ = try await temporary.bus.connect(to: "notes") }
                #expect(Set(temporary.files) == Set(mine), "files left: \(temporary.files)")
                // What a service that died left behind is still cleaned up (its lock proves it).
                let dead = try ServiceProcess(name: "dead", bus: temporary)
                _ = try await temporary.bus.waitForService("dead", timeout: .seconds(20))
                dead.kill()
                await dead.waitForExit()
                #expect(try temporary.bus.services().isEmpty)
                #expect(Set(temporary.files) == Set(mine), "files left: \(temporary.files)")
            }
        }
    }
}

/// Another user must never get between a client and its service (issue
/// "Hardening", defect 7): a bus below a directory someone else controls is
/// refused, and a client checks the kernel's word on who serves a socket before
/// it sends a byte.
@Suite(.serialized) struct BusTrustTests {
    /// The uid these tests hand directories and processes to (`nobody`).
    static let stranger: UInt32 = 65534

    /// A fresh directory under /tmp with `mode` and `owner`, removed by the caller.
    static func directory(_ label: String, mode: mode_t, owner: UInt32 = UInt32(getuid())) -> String {
        let path = "/tmp/icb-\(label)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(path, 0o700)
        chown(path, owner, owner)
        chmod(path, mode)
        return path
    }

    @Test func aBusBelowADirectoryAnotherUserControlsIsRefused() async throws {
        try await withResourceCheck {
            // Pre-created by another user (the /tmp/intercom-<uid> attack): refused,
            // naming the directory and its owner.
            let foreign = Self.directory("foreign", mode: 0o755, owner: Self.stranger)
            defer { rmdir(foreign + "/bus"); rmdir(foreign) }
            mkdir(foreign + "/bus", 0o700)
            let error = await expectIntercomError(.permissionDenied) { _ = try await Bus(directory: foreign + "/bus").serve("x") }
            #expect(error?.message.contains(foreign) == true && error?.message.contains("uid \(Self.stranger)") == true, "\(String(describing: error))")
            #expect(throws: IntercomError.self) { try Bus(directory: foreign + "/bus").services() }
            await expectIntercomError(.permissionDenied) { _ = try await Bus(directory: foreign + "/bus").connect(to: "x") }
            // Creating the bus below it is refused too (nothing is made there).
            await expectIntercomError(.permissionDenied) { _ = try await Bus(directory: foreign + "/new").serve("x") }
            #expect(access(foreign + "/new", F_OK) != 0)

            // Writable by others and not sticky: anyone could rename the bus away.
            let open = Self.directory("open", mode: 0o777)
            defer { rmdir(open + "/bus"); rmdir(open) }
            let openError = await expectIntercomError(.permissionDenied) { _ = try await Bus(directory: open + "/bus").serve("x") }
            #expect(openError?.message.contains("writable by group or others") == true, "\(String(describing: openError))")

            // Sticky and world-writable like /tmp, with our own entry below: fine.
            let sticky = Self.directory("sticky", mode: 0o1777)
            defer { rmdir(sticky + "/bus"); rmdir(sticky) }
            let service = try await Bus(directory: sticky + "/bus").serve("fine")
            let client = try await Bus(directory: sticky + "/bus").connect(to: "fine")
            #expect(try await client.call("intercom.info", 0, returning: ServiceInfo.self).name == "fine")
            await client.close()
            await service.close()

            // Sticky, but the entry below belongs to someone else: refused.
            let shared = Self.directory("shared", mode: 0o1777)
            let planted = shared + "/planted"
            mkdir(planted, 0o700)
            chown(planted, Self.stranger, Self.stranger)
            defer { rmdir(planted); rmdir(shared) }
            let plantedError = await expectIntercomError(.permissionDenied) { _ = try await Bus(directory: planted).serve("x") }
            #expect(plantedError?.message.contains("uid \(Self.stranger)") == true, "\(String(describing: plantedError))")
        }
    }

    /// A socket served by another user (here `nobody`, through setpriv): the
    /// client refuses it with a clear error and the server receives nothing.
    @Test func aClientSendsNothingToAServerOfAnotherUser() async throws {
        try await withResourceCheck {
            let directory = Self.directory("planted", mode: 0o700, owner: Self.stranger)
            let path = directory + "/fake.sock"
            defer {
                unlink(path)
                rmdir(directory)
            }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = [
                "--reuid=\(Self.stranger)", "--regid=\(Self.stranger)", "--clear-groups", "--",
                ChildProcess.helperPath, "--count-bytes-at", path,
            ]
            process.standardInput = FileHandle.nullDevice
            let watched = WatchedProcess(process)
            try watched.run()
            try await observeUntil("the stranger listens", timeout: .seconds(20)) { access(path, F_OK) == 0 }
            let error = await expectIntercomError(.permissionDenied) { _ = try await Peer.connect(unixPath: path) }
            #expect(error?.message.contains("uid \(Self.stranger)") == true, "\(String(describing: error))")
            #expect(error?.message.contains("nothing was sent") == true, "\(String(describing: error))")
            #expect(await watched.waitForExit() == 0)
            let received = try String(contentsOfFile: path + ".count", encoding: .utf8)
            unlink(path + ".count")
            #expect(received == "0", "the stranger's server received \(received) bytes")
        }
    }
}
