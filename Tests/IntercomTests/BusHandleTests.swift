import Foundation
import Intercom
import IntercomTestSupport
import IntercomTestHelper
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Handles that outlive a service's process, broadcasts, and typed commands,
/// with real service processes.
@Suite(.serialized) struct BusHandleTests {
    @Test func aHandleLearnsOfADeathAndReconnectsToTheRestartedService() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let bus = temporary.bus
                let first = try ServiceProcess(name: "camera", bus: temporary)
                let camera = bus.makeHandle(to: "camera")
                var changes = camera.changes.makeAsyncIterator()
                var states = camera.states.makeAsyncIterator()
                #expect(try await camera.call("math.add", AddRequest(a: 1, b: 1), returning: Int.self, timeout: .seconds(20)) == 2)
                #expect(await changes.next() == .connected(pid: first.pid))
                #expect(await states.next() == .connecting)
                #expect(await states.next() == .connected(pid: first.pid))

                // A call pending when the service dies fails with peerLost, and the handle is told.
                let pending = Task { try await camera.call("hang", 0, returning: Int.self, timeout: .seconds(60)) }
                _ = try await camera.peer().receiveMessage(timeout: .seconds(10))  // "hang.started"
                first.kill(SIGKILL)
                await expectIntercomError(.peerLost) { _ = try await pending.value }
                guard case .lost(let pid, let reason)? = await changes.next() else {
                    Issue.record("expected .lost")
                    return
                }
                #expect(pid == first.pid)
                #expect(reason.code == .peerLost)
                #expect(await states.next() == .lost(reason))
                await first.waitForExit()

                // A fail-fast handle fails at once while the service is away ...
                let impatient = bus.makeHandle(to: "camera", whenAway: .failFast)
                await expectIntercomError(.serviceNotFound) {
                    _ = try await impatient.call("math.add", AddRequest(a: 1, b: 1), returning: Int.self)
                }
                // ... while a call made in the gap on a waiting handle succeeds once it is back.
                let inTheGap = Task {
                    try await camera.call("peer.pid", 0, returning: Int.self, timeout: .seconds(30))
                }
                let second = try ServiceProcess(name: "camera", bus: temporary)
                #expect(try await inTheGap.value == Int(second.pid))
                #expect(await changes.next() == .connected(pid: second.pid))
                #expect(await states.next() == .connecting)
                #expect(await states.next() == .reconnected(pid: second.pid))
                #expect(try await impatient.call("peer.pid", 0, returning: Int.self) == Int(second.pid))

                // A plain connection: connected, then lost when the process quits.
                let plain = try await bus.connect(to: "camera")
                var plainStates = plain.connectionStates().makeAsyncIterator()
                #expect(await plainStates.next() == .connected(pid: second.pid))
                _ = try await camera.call("intercom.quit", 0, returning: Bool.self)
                guard case .lost(let why)? = await plainStates.next() else {
                    Issue.record("expected .lost")
                    return
                }
                #expect(why.code == .peerLost)
                #expect(await plainStates.next() == nil, "nothing follows the end")
                await camera.close()
                // The handle may or may not have seen the quit as a loss before it was closed.
                var rest: [ConnectionState] = []
                while let state = await states.next() { rest.append(state) }
                #expect(rest.last == .closed && rest.dropLast().allSatisfy { if case .lost = $0 { true } else { false } }, "\(rest)")
                await impatient.close()
                #expect(await second.waitForExit() == 0)
            }
        }
    }

    @Test func aBroadcastReachesEveryLiveServiceAndSkipsTheDead() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let bus = temporary.bus
                let services = try ["a", "b", "c"].map { try ServiceProcess(name: $0, bus: temporary) }
                for name in ["a", "b", "c"] { _ = try await bus.waitForService(name, timeout: .seconds(20)) }
                services[2].kill(SIGKILL)
                await services[2].waitForExit()
                // A live service without the method: reported, not waited on.
                let bystander = try await bus.serve("bystander")

                let report = try await bus.broadcast("peer.pid", 0, returning: Int.self)
                #expect(report.received == ["a", "b"])
                #expect(report.replies["a"] == Int(services[0].pid))
                #expect(report.replies["b"] == Int(services[1].pid))
                #expect(report.failures["bystander"]?.code == .unknownMethod)
                #expect(report.failures["c"] == nil && report.replies["c"] == nil, "the dead service is skipped")

                // The sanity check: every live service answers a ping; a stopped one does not.
                services[1].kill(SIGSTOP)
                let pings = try await bus.pingServices(timeout: .milliseconds(500))
                services[1].kill(SIGCONT)
                #expect(Set(pings.replies.keys) == ["a", "bystander"], "\(pings.failures)")
                #expect(pings.replies.values.allSatisfy { $0 > .zero })
                #expect(pings.failures["b"] != nil && pings.failures["c"] == nil)

                let quit = try await bus.broadcast("intercom.quit", 0, returning: Bool.self)
                #expect(quit.received == ["a", "b", "bystander"])
                #expect(await services[0].waitForExit() == 0)
                #expect(await services[1].waitForExit() == 0)
                await bystander.close()
            }
        }
    }

    /// IPC::Manager's bus-wide presence (D-Bus's NameOwnerChanged): who is
    /// there first, then who comes and who goes — a crash included.
    @Test func serviceChangesTellWhoAppearsAndWhoLeaves() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let bus = temporary.bus
                let first = try ServiceProcess(name: "first", bus: temporary)
                _ = try await bus.waitForService("first", timeout: .seconds(20))
                var changes = bus.serviceChanges().makeAsyncIterator()
                func next() async throws -> String {
                    switch try await changes.next() {
                    case .appeared(let service)?: return "+\(service.name) \(service.pid)"
                    case .disappeared(let service)?: return "-\(service.name) \(service.pid)"
                    case nil: return "ended"
                    }
                }
                #expect(try await next() == "+first \(first.pid)")
                let second = try ServiceProcess(name: "second", bus: temporary)
                #expect(try await next() == "+second \(second.pid)")
                first.kill(SIGKILL)
                await first.waitForExit()
                #expect(try await next() == "-first \(first.pid)", "a crash shows too")
                let peer = try await bus.connect(to: "second")
                #expect(try await peer.call("intercom.quit", 0, returning: Bool.self))
                await peer.waitUntilClosed()
                #expect(await second.waitForExit() == 0)
                #expect(try await next() == "-second \(second.pid)")
                // A bus whose directory is unsafe says so, rather than ending quietly.
                let unsafe = temporary.directory + "/open-to-all"
                mkdir(unsafe, 0o700)
                chmod(unsafe, 0o777)
                var refused = Bus(directory: unsafe).serviceChanges().makeAsyncIterator()
                let error = await #expect(throws: IntercomError.self) { _ = try await refused.next() }
                #expect(error?.code == .permissionDenied, "\(String(describing: error))")
                rmdir(unsafe)
            }
        }
    }

    @Test func typedCommandsAreRoutedByDeliveryModeAndCheckedAtStartUp() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let bus = temporary.bus
                let camera = try ServiceProcess(name: "camera", bus: temporary)
                let other = try ServiceProcess(name: "other", bus: temporary)
                _ = try await bus.waitForService("camera", timeout: .seconds(20))
                _ = try await bus.waitForService("other", timeout: .seconds(20))

                // Before the coordinator is up, the check names the command and its target.
                let early = await expectIntercomError(.missingHandler) {
                    try bus.checkHandlers(for: [CameraExposureCommand.self, SnapshotCommand.self, StatusCommand.self])
                }
                #expect(early?.message.contains("'status.report' goes to service 'coordinator', which is not running") == true)

                let router = Router()
                try router.handle(StatusCommand.self) { command, _ in "ok from \(command.from)" }
                await expectIntercomError(.conflict) {
                    try router.handle(StatusCommand.self) { _, _ in "second" }
                }
                let coordinator = try await bus.serve("coordinator", router: router)
                try bus.checkHandlers(for: [CameraExposureCommand.self, SnapshotCommand.self, StatusCommand.self])
                let missing = await expectIntercomError(.missingHandler) {
                    try bus.checkHandlers(for: [CameraExposureCommand.self, UnhandledCommand.self])
                }
                #expect(missing?.message.contains("'nobody.handles' goes to service 'camera'") == true, "\(String(describing: missing))")

                #expect(try await bus.call(CameraExposureCommand(ms: 7)) == Ack(ok: true, appliedMs: 7))
                #expect(try await bus.call(StatusCommand(from: "test")) == "ok from test")
                let snapshots = try await bus.broadcast(SnapshotCommand())
                #expect(snapshots.received == ["camera", "other"], "only services that handle it: \(snapshots.received) \(snapshots.failures)")
                #expect(snapshots.replies["camera"] == Int(camera.pid))
                await expectIntercomError(.invalidName) { _ = try await bus.call(SnapshotCommand()) }
                // A per-send target: this one command to another service than its type names.
                let redirected = try await bus.call(SnapshotCommand(), to: "other")
                #expect(redirected == Int(other.pid))
                #expect(try await bus.call(CameraExposureCommand(ms: 9), to: "other") == Ack(ok: true, appliedMs: 9))
                await expectIntercomError(.serviceNotFound) { _ = try await bus.call(CameraExposureCommand(ms: 9), to: "nobody") }

                _ = try await bus.broadcast("intercom.quit", 0, returning: Bool.self)
                #expect(await camera.waitForExit() == 0)
                #expect(await other.waitForExit() == 0)
                await coordinator.close()
            }
        }
    }
}
