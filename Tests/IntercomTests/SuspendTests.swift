import Foundation
import Intercom
import IntercomTestSupport
import IntercomTestHelper
import Testing

/// IPC::Manager's suspend: a service that restarts on purpose keeps its
/// callers' requests — what it received it answers, what is made meanwhile
/// waits for the next instance — with real service processes.
@Suite(.serialized) struct SuspendTests {
    @Test func aServiceThatSuspendsToRestartLosesNoCall() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let bus = temporary.bus
                let first = try ServiceProcess(name: "restarting", bus: temporary)
                _ = try await bus.waitForService("restarting", timeout: .seconds(30))
                // Fail-fast: without the suspension, a call in the gap would fail with serviceNotFound.
                let handle = bus.makeHandle(to: "restarting", whenAway: .failFast)
                var changes = handle.changes.makeAsyncIterator()
                var states = handle.states.makeAsyncIterator()
                #expect(try await handle.call("restart.pid", 0, returning: Int32.self) == first.pid)
                #expect(await changes.next() == .connected(pid: first.pid))
                #expect(await states.next() == .connecting)
                #expect(await states.next() == .connected(pid: first.pid))
                let plain = try await bus.connect(to: "restarting")

                // A call running at the first instance while it suspends …
                let held = Task { try await handle.call("restart.hold", 0, returning: Int32.self, timeout: .seconds(60)) }
                // (calls on one connection arrive in order: once this one is answered, the held one is running)
                #expect(try await handle.call("restart.pid", 0, returning: Int32.self) == first.pid)
                var presence = bus.serviceChanges().makeAsyncIterator()
                #expect(try await presence.next() == .appeared(try #require(bus.service(named: "restarting"))))
                #expect(try await handle.call("restart.suspend", 60_000, returning: Bool.self))
                guard case .disappeared(let left)? = try await presence.next() else {
                    Issue.record("expected the service to leave the directory")
                    return
                }
                #expect(left.pid == first.pid)
                let suspension = try #require(bus.suspension(of: "restarting"))
                #expect(suspension.pid == first.pid)
                #expect(suspension.until > Date().addingTimeInterval(30))

                // A plain connection without calls closes itself on the word, and refuses calls as suspended.
                await plain.waitUntilClosed()
                await expectIntercomError(.suspended) { _ = try await plain.call("restart.pid", 0, returning: Int32.self) }
                await expectIntercomError(.serviceNotFound) { _ = try await bus.connect(to: "restarting") }

                // … is answered by it, not failed: the first instance serves until its clients are done.
                try await handle.send("restart.release", 0)
                #expect(try await held.value == first.pid)
                guard case .lost(let pid, let reason)? = await changes.next() else {
                    Issue.record("expected .lost")
                    return
                }
                #expect(pid == first.pid)
                #expect(reason.code == .suspended)
                #expect(await first.waitForExit() == 0)

                // A call made in the gap waits for the next instance and is delivered to it.
                let inTheGap = Task { try await handle.call("restart.pid", 0, returning: Int32.self, timeout: .seconds(60)) }
                guard case .lost(let lostReason)? = await states.next() else {
                    Issue.record("expected the state .lost")
                    return
                }
                #expect(lostReason.code == .suspended)
                #expect(await states.next() == .connecting, "the call is looking for the service")
                let second = try ServiceProcess(name: "restarting", bus: temporary)
                #expect(try await inTheGap.value == second.pid)
                #expect(await states.next() == .reconnected(pid: second.pid))
                #expect(bus.suspension(of: "restarting") == nil, "the next instance removed the suspension")
                #expect(!temporary.files.contains("restarting.suspended"))

                _ = try await handle.call("intercom.quit", 0, returning: Bool.self)
                #expect(await second.waitForExit() == 0)
                await handle.close()
            }
        }
    }

    /// A suspension that outlives the time it gave counts for nothing: callers
    /// fail as for an absent service, and the file is cleaned up by the next look.
    @Test func aSuspensionExpires() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let bus = temporary.bus
                let service = try ServiceProcess(name: "gone", bus: temporary)
                _ = try await bus.waitForService("gone", timeout: .seconds(30))
                let handle = bus.makeHandle(to: "gone", whenAway: .failFast)
                #expect(try await handle.call("restart.pid", 0, returning: Int32.self, timeout: .seconds(30)) == service.pid)
                #expect(try await handle.call("restart.suspend", 0, returning: Bool.self))
                #expect(await service.waitForExit() == 0)
                #expect(temporary.files.contains("gone.suspended"))
                #expect(bus.suspension(of: "gone") == nil)
                await expectIntercomError(.serviceNotFound) { _ = try await handle.call("restart.pid", 0, returning: Int32.self) }
                #expect(try bus.services().isEmpty)
                #expect(temporary.files.isEmpty, "left: \(temporary.files)")
                await handle.close()
            }
        }
    }
}
