import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
import Testing

/// On-demand activation (D-Bus activation, launchd): a call to an absent
/// service with an activation starts it, waits until it serves, and goes
/// through — once, however many callers ask at the same time.
@Suite(.serialized) struct ActivationTests {
    @Test func callsToAnAbsentServiceStartItOnceAndReachIt() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                var bus = temporary.bus
                // guide: activation
                bus.activations["lazy"] = ServiceActivation(
                    executable: ChildProcess.helperPath, arguments: ["--serve", "lazy", "--bus", temporary.directory],
                    environment: ["SWIFT_BACKTRACE": "enable=no"], startTimeout: .seconds(30))
                // end guide
                #expect(try bus.services().isEmpty)
                let activating = bus

                // Four callers at once — plain connections and fail-fast handles — get one instance.
                let handle = bus.makeHandle(to: "lazy", whenAway: .failFast)
                let pids = try await withThrowingTaskGroup(of: Int32.self) { group in
                    for index in 0..<4 {
                        group.addTask {
                            if index.isMultiple(of: 2) {
                                return try await handle.call("restart.pid", 0, returning: Int32.self, timeout: .seconds(30))
                            }
                            let peer = try await activating.connect(to: "lazy")
                            let pid = try await peer.call("restart.pid", 0, returning: Int32.self, timeout: .seconds(30))
                            await peer.close()
                            return pid
                        }
                    }
                    return try await group.reduce(into: Set<Int32>()) { $0.insert($1) }
                }
                #expect(pids.count == 1, "one instance for every caller: \(pids)")
                let pid = try #require(pids.first)
                #expect(try bus.services().map(\.pid) == [pid])
                #expect(!temporary.files.contains("lazy.activating"), "the starter's lock is gone")

                // Running now: no second start.
                #expect(try await bus.activate("lazy").pid == pid)
                #expect(try await handle.call("intercom.quit", 0, returning: Bool.self))
                #expect(await ServiceActivation.exitStatus(ofActivated: pid) == 0)
                #expect(await ServiceActivation.exitStatus(ofActivated: getpid()) == nil, "not a process this one activated")
                await handle.close()
            }
        }
    }

    @Test func anActivationThatCannotServeSaysWhy() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                var bus = temporary.bus
                let helper = ChildProcess.helperPath
                bus.activations["missing"] = ServiceActivation(executable: "/nonexistent/service")
                bus.activations["quitter"] = ServiceActivation(executable: helper, arguments: ["--exit-now", "3"])
                bus.activations["elsewhere"] = ServiceActivation(
                    executable: helper, arguments: ["--serve", "other", "--bus", temporary.directory], startTimeout: .milliseconds(300))

                let missing = await #expect(throws: IntercomError.self) { _ = try await bus.connect(to: "missing") }
                #expect(missing?.code == .serviceNotFound)
                #expect(missing?.message.contains("cannot start /nonexistent/service: No such file or directory") == true, "\(String(describing: missing))")

                let quitter = await #expect(throws: IntercomError.self) { _ = try await bus.connect(to: "quitter", timeout: .seconds(30)) }
                #expect(quitter?.code == .serviceNotFound)
                #expect(quitter?.message.contains("exited with status 3 before it served the name") == true, "\(String(describing: quitter))")

                // A program that serves another name: the activation gives up at its start timeout.
                let late = await #expect(throws: IntercomError.self) { _ = try await bus.activate("elsewhere") }
                #expect(late?.code == .timeout)
                #expect(late?.message.contains("did not serve the name within") == true, "\(String(describing: late))")
                #expect(late?.message.contains("set logFile to keep it") == true, "says where to look: \(String(describing: late))")
                let other = try await bus.connect(to: "other", timeout: .seconds(30))
                let pid = other.remote.reportedPID
                _ = try await other.call("intercom.quit", 0, returning: Bool.self)
                await other.close()
                #expect(await ServiceActivation.exitStatus(ofActivated: pid) == 0)

                // Without an activation, an absent service is simply absent.
                await expectIntercomError(.serviceNotFound) { _ = try await bus.activate("unknown") }
                #expect(!temporary.files.contains { $0.hasSuffix(".activating") })
            }
        }
    }

    /// `--activations FILE` on the command line: `intercom call` starts the
    /// service it names.
    @Test func theCommandLineActivatesFromAFile() async throws {
        try await withResourceCheck {
            try await withTemporaryBus(expectEmpty: false) { temporary in
                let file = temporary.directory + "/../icb-activations-\(getpid()).json"
                defer { unlink(file) }
                let activations: [String: ServiceActivation] = [
                    "lazyecho": ServiceActivation(executable: intercomPath, arguments: ["echo", "--name", "lazyecho"])
                ]
                try JSONEncoder().encode(activations).write(to: URL(fileURLWithPath: file))

                let echoed = try await runCLI(["call", "lazyecho", "echo", #"{"a":1}"#, "--activations", file], busDirectory: temporary.directory)
                #expect(echoed.status == 0, "\(echoed.errors)")
                #expect(echoed.output == "{\"a\":1}\n")
                let info = try #require(try temporary.bus.service(named: "lazyecho"))
                var presence = temporary.bus.serviceChanges().makeAsyncIterator()
                #expect(try await presence.next() == .appeared(info))
                let quit = try await runCLI(["call", "lazyecho", "intercom.quit", "0"], busDirectory: temporary.directory)
                #expect(quit.output == "true\n")
                #expect(try await presence.next() == .disappeared(info))

                let broken = try await runCLI(["list", "--activations", "/nonexistent.json"], busDirectory: temporary.directory)
                #expect(broken.status != 0)
                #expect(broken.errors.contains("cannot read activations from /nonexistent.json"), "\(broken.errors)")
            }
        }
    }
}
