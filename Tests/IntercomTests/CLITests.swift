import Foundation
import Intercom
import IntercomTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A run of the `intercom` executable.
struct CLIRun {
    var status: Int32
    var output: String
    var errors: String
}

/// The `intercom` executable built next to the test helper.
var intercomPath: String {
    URL(fileURLWithPath: ChildProcess.helperPath).deletingLastPathComponent().appendingPathComponent("intercom").path
}

/// Starts `intercom arguments…` on the bus at `busDirectory` (or, if nil, with
/// `environment` deciding where buses are).
func startCLI(
    _ arguments: [String], busDirectory: String?, environment extra: [String: String] = [:], input: Data? = nil
) throws -> (
    Process, Pipe, Pipe, AsyncStream<Int32>
) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: intercomPath)
    process.arguments = arguments
    var environment = ProcessInfo.processInfo.environment
    environment["INTERCOM_BUS_DIR"] = busDirectory
    environment.merge(extra) { $1 }
    process.environment = environment
    let inputPipe = input.map { _ in Pipe() }
    process.standardInput = inputPipe ?? FileHandle.nullDevice
    let output = Pipe()
    let errors = Pipe()
    process.standardOutput = output
    process.standardError = errors
    let (exit, continuation) = AsyncStream.makeStream(of: Int32.self)
    process.terminationHandler = { process in
        continuation.yield(process.terminationStatus)
        continuation.finish()
    }
    try process.run()
    if let input, let inputPipe {
        // Written from a thread of its own (a large input fills the pipe), then closed.
        Thread.detachNewThread {
            inputPipe.fileHandleForWriting.write(input)
            try? inputPipe.fileHandleForWriting.close()
        }
    }
    return (process, output, errors, exit)
}

/// Runs `intercom arguments…` to completion.
func runCLI(_ arguments: [String], busDirectory: String?, environment: [String: String] = [:], input: Data? = nil) async throws -> CLIRun {
    let (_, output, errors, exit) = try startCLI(arguments, busDirectory: busDirectory, environment: environment, input: input)
    // Read both pipes to the end (the process exits when it is done writing), each
    // on a thread of its own: a blocking read on the concurrency pool (two threads
    // on two CPUs) stalled every other test in the process for as long as it lasted.
    async let out = onThread { output.fileHandleForReading.readDataToEndOfFile() }
    async let err = onThread { errors.fileHandleForReading.readDataToEndOfFile() }
    let (outData, errData) = await (out, err)
    var status: Int32 = -1
    for await code in exit { status = code }
    try? output.fileHandleForReading.close()
    try? errors.fileHandleForReading.close()
    return CLIRun(status: status, output: String(decoding: outData, as: UTF8.self), errors: String(decoding: errData, as: UTF8.self))
}

/// `intercom list`, `call`, `ping`, `watch` and `echo`, end to end as separate processes.
@Suite(.serialized) struct CLITests {
    /// `--bus NAME` picks `$XDG_RUNTIME_DIR/intercom/NAME` when INTERCOM_BUS_DIR is not set.
    @Test func busNamesSelectSeparateBuses() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { runtime in
                let environment = ["XDG_RUNTIME_DIR": runtime.directory]
                let (_, out, err, exit) = try startCLI(["echo", "--bus", "b1", "--name", "e"], busDirectory: nil, environment: environment)
                let b1 = Bus(directory: runtime.directory + "/intercom/b1")
                _ = try await b1.waitForService("e", timeout: .seconds(30))
                let onB1 = try await runCLI(["list", "--bus", "b1"], busDirectory: nil, environment: environment)
                #expect(onB1.output.contains("e "), "\(onB1.output)")
                let onB2 = try await runCLI(["list", "--bus", "b2"], busDirectory: nil, environment: environment)
                #expect(onB2.output.contains("no services"), "\(onB2.output)")
                let quit = try await runCLI(["call", "--bus", "b1", "e", "intercom.quit", "0"], busDirectory: nil, environment: environment)
                #expect(quit.output == "true\n")
                for await status in exit { #expect(status == 0) }
                try? out.fileHandleForReading.close()
                try? err.fileHandleForReading.close()
                // The bus directories are ours to remove; the service left nothing in b1.
                #expect(((try? FileManager.default.contentsOfDirectory(atPath: runtime.directory + "/intercom/b1")) ?? ["?"]).isEmpty)
                try FileManager.default.removeItem(atPath: runtime.directory + "/intercom")
            }
        }
    }

    @Test func listCallPingWatchAndEchoEndToEnd() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let directory = temporary.directory
                let (echo, echoOut, echoErr, echoExit) = try startCLI(["echo", "--name", "e1"], busDirectory: directory)
                let info = try await temporary.bus.waitForService("e1", timeout: .seconds(30))
                #expect(info.pid == echo.processIdentifier)

                // list: a table, and JSON that decodes as service records.
                let table = try await runCLI(["list"], busDirectory: directory)
                #expect(table.status == 0)
                #expect(table.output.contains("NAME") && table.output.contains("e1"))
                #expect(table.output.contains("echo, exit, fail, file, shout, sleep, sum"), "\(table.output)")
                let json = try await runCLI(["list", "--json"], busDirectory: directory)
                let decoder = JSONDecoder()
                decoder.dateDecodingStrategy = .iso8601
                let listed = try decoder.decode([ServiceInfo].self, from: Data(json.output.utf8))
                #expect(listed.map(\.name) == ["e1"])
                #expect(listed.first?.pid == echo.processIdentifier)

                // call: JSON in, JSON out; errors with their code and exit status 1.
                let echoed = try await runCLI(["call", "e1", "echo", #"{"a":[1,2,"x"]}"#], busDirectory: directory)
                #expect(echoed.status == 0)
                #expect(echoed.output == "{\"a\":[1,2,\"x\"]}\n")
                let slept = try await runCLI(["call", "e1", "sleep", "5"], busDirectory: directory)
                #expect(slept.output == "5\n")
                let failed = try await runCLI(["call", "e1", "fail", #""boom""#], busDirectory: directory)
                #expect(failed.status == 1)
                #expect(failed.errors.contains("error: remote") && failed.errors.contains("boom"), "\(failed.errors)")
                let badArgument = try await runCLI(["call", "e1", "sleep", #""soon""#], busDirectory: directory)
                #expect(badArgument.status == 1)
                #expect(badArgument.errors.contains("invalidPayload"), "\(badArgument.errors)")
                let missing = try await runCLI(["call", "nobody", "x"], busDirectory: directory)
                #expect(missing.status == 1)
                #expect(missing.errors.contains("serviceNotFound") && missing.errors.contains("running: e1"))
                let unknown = try await runCLI(["call", "e1", "no.such.method"], busDirectory: directory)
                #expect(unknown.status == 1)
                #expect(unknown.errors.contains("unknownMethod"))

                // ping: per-ping lines and the statistics.
                let ping = try await runCLI(["ping", "e1", "--count", "5"], busDirectory: directory)
                #expect(ping.status == 0)
                #expect(ping.output.components(separatedBy: "seq=").count == 6)
                #expect(ping.output.contains("5 pings: min") && ping.output.contains("median") && ping.output.contains("p99"))
                // ping --all: the sanity check of every live service.
                let everyone = try await runCLI(["ping", "--all"], busDirectory: directory)
                #expect(everyone.status == 0, "\(everyone.errors)")
                #expect(everyone.output.contains("e1: ") && everyone.output.contains("1 of 1 services answered"), "\(everyone.output)")

                // watch: prints the echo service's ticks as they come, with time and source.
                let (watch, watchOut, watchErr, watchExit) = try startCLI(["watch", "tick"], busDirectory: directory)
                let line = await onThread { () -> String in
                    var collected = Data()
                    while !collected.contains(UInt8(ascii: "\n")) {
                        let chunk = watchOut.fileHandleForReading.availableData
                        if chunk.isEmpty { break }
                        collected.append(chunk)
                    }
                    return String(decoding: collected, as: UTF8.self)
                }
                #expect(line.contains(" e1 tick {\"count\":"), "\(line)")
                kill(watch.processIdentifier, SIGTERM)
                for await _ in watchExit {}
                try? watchOut.fileHandleForReading.close()
                try? watchErr.fileHandleForReading.close()

                // watch --services: the live ones first, then who leaves.
                let (presence, presenceOut, presenceErr, presenceExit) = try startCLI(["watch", "--services"], busDirectory: directory)
                let appeared = await readOutput(of: presenceOut, until: "e1 (pid")
                #expect(appeared.contains(" + e1 (pid "), "\(appeared)")

                // echo's exit method: the service stops and the process exits with the code.
                let exited = try await runCLI(["call", "e1", "exit", "3"], busDirectory: directory)
                #expect(exited.output == "true\n")
                var status: Int32 = -1
                for await code in echoExit { status = code }
                #expect(status == 3)
                let left = await readOutput(of: presenceOut, until: " - e1")
                #expect(left.contains(" - e1 (pid "), "\(left)")
                kill(presence.processIdentifier, SIGTERM)
                for await _ in presenceExit {}
                try? presenceOut.fileHandleForReading.close()
                try? presenceErr.fileHandleForReading.close()
                try? echoOut.fileHandleForReading.close()
                try? echoErr.fileHandleForReading.close()
                let after = try await runCLI(["list"], busDirectory: directory)
                #expect(after.output.contains("no services"))
            }
        }
    }

    /// The command line's rough edges (issue "Hardening", defect 8): numbers are
    /// checked, the timeout covers the handshake, a second echo does not claim to
    /// serve, SIGTERM leaves nothing behind, and long arguments come from standard
    /// input or a file.
    @Test func theCommandLineChecksItsNumbersHonoursItsTimeoutAndCleansUp() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let directory = temporary.directory
                // Numbers: a clear error and the usage exit status, never a crash (SIGILL was 132).
                for bad in ["nan", "inf", "1e300", "-1", "0"] {
                    let run = try await runCLI(["call", "e2", "echo", "1", "--timeout", bad], busDirectory: directory)
                    #expect(run.status == 64, "--timeout \(bad): status \(run.status)")
                    #expect(run.errors.contains("from 0.001 to 86400"), "--timeout \(bad): \(run.errors)")
                }
                let badCount = try await runCLI(["ping", "e2", "--count", "0"], busDirectory: directory)
                #expect(badCount.status == 64 && badCount.errors.contains("from 1 to 1000000"), "\(badCount.errors)")

                let (echo, echoOut, echoErr, echoExit) = try startCLI(["echo", "--name", "e2"], busDirectory: directory)
                _ = try await temporary.bus.waitForService("e2", timeout: .seconds(30))

                // A second echo under the same name fails without saying it serves.
                let second = try await runCLI(["echo", "--name", "e2"], busDirectory: directory)
                #expect(second.status == 1)
                #expect(second.errors.contains("nameInUse") && !second.errors.contains("serving"), "\(second.errors)")

                // Arguments too long for a command line: from standard input or a file.
                let long = "\"" + String(repeating: "x", count: 200 << 10) + "\""
                let fromInput = try await runCLI(["call", "e2", "echo", "-"], busDirectory: directory, input: Data(long.utf8))
                #expect(fromInput.status == 0 && fromInput.output == long + "\n", "\(fromInput.errors)")
                let file = directory + "/argument.json"
                #expect(FileManager.default.createFile(atPath: file, contents: Data(long.utf8)))
                let fromFile = try await runCLI(["call", "e2", "echo", "@" + file], busDirectory: directory)
                #expect(fromFile.status == 0 && fromFile.output == long + "\n", "\(fromFile.errors)")
                unlink(file)

                // A stopped service: the caller's timeout covers the handshake (it took 10 s).
                kill(echo.processIdentifier, SIGSTOP)
                let started = ContinuousClock.now
                let stopped = try await runCLI(["call", "e2", "echo", "1", "--timeout", "1"], busDirectory: directory)
                let took = ContinuousClock.now - started
                kill(echo.processIdentifier, SIGCONT)
                #expect(stopped.status == 1 && stopped.errors.contains("timeout"), "\(stopped.errors)")
                #expect(took < .seconds(6), "a 1 s timeout took \(took)")

                // SIGTERM: the service gives its name up and removes its files.
                kill(echo.processIdentifier, SIGTERM)
                var status: Int32 = -1
                for await code in echoExit { status = code }
                let said = String(decoding: echoErr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                #expect(status == 0 && echo.terminationReason == .exit, "echo ended with \(status) (\(echo.terminationReason)): \(said.prefix(3000))")
                #expect(temporary.files.isEmpty, "left behind: \(temporary.files)")
                try? echoOut.fileHandleForReading.close()
                try? echoErr.fileHandleForReading.close()
            }
        }
    }
}

/// Reads `pipe` until what came contains `marker`, or it ends; returns what came
/// (on a thread of its own: the read blocks).
func readOutput(of pipe: Pipe, until marker: String) async -> String {
    await onThread { () -> String in
        var collected = Data()
        while !String(decoding: collected, as: UTF8.self).contains(marker) {
            let chunk = pipe.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            collected.append(chunk)
        }
        return String(decoding: collected, as: UTF8.self)
    }
}
