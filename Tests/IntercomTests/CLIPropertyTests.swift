import Foundation
import Intercom
import IntercomTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `intercom get`, `set` and `watch --property` against the echo service's
/// `greeting`, `intercom call` of its streaming `count` and of its input-streaming
/// `sum` and `shout` (`--input -`), and its `file` method's
/// descriptor, in real processes.
@Suite struct CLIPropertyTests {
    @Test func getSetAndWatchAPropertyOfARunningService() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let directory = temporary.directory
                let (_, echoOut, echoErr, echoExit) = try startCLI(["echo", "--name", "e3"], busDirectory: directory)
                let info = try await temporary.bus.waitForService("e3", timeout: .seconds(30))
                #expect(info.properties == ["greeting"])

                let got = try await runCLI(["get", "e3", "greeting"], busDirectory: directory)
                #expect(got.status == 0, "\(got.errors)")
                #expect(got.output == "\"hello\"\n")
                let (watch, watchOut, watchErr, watchExit) = try startCLI(
                    ["watch", "--service", "e3", "--property", "greeting"], busDirectory: directory)
                let first = await readOutput(of: watchOut, until: "\n")
                #expect(first == "\"hello\"\n")
                let set = try await runCLI(["set", "e3", "greeting", #""bonjour""#], busDirectory: directory)
                #expect(set.output == "\"bonjour\"\n", "\(set.errors)")
                let second = await readOutput(of: watchOut, until: "\n")
                #expect(second == "\"bonjour\"\n")
                // The service refuses what it does not accept, saying why; nothing changes.
                let refused = try await runCLI(["set", "e3", "greeting", #""""#], busDirectory: directory)
                #expect(refused.status == 1)
                #expect(refused.errors.contains("invalidPayload") && refused.errors.contains("1 to 100 characters"), "\(refused.errors)")
                #expect(try await runCLI(["get", "e3", "greeting"], busDirectory: directory).output == "\"bonjour\"\n")

                // A streaming method prints one JSON line per item.
                let counted = try await runCLI(["call", "e3", "count", "5"], busDirectory: directory)
                #expect(counted.status == 0, "\(counted.errors)")
                #expect(counted.output == "0\n1\n2\n3\n4\n", "\(counted.output)")
                let none = try await runCLI(["call", "e3", "count", "0"], busDirectory: directory)
                #expect(none.output == "null\n", "\(none.output)")
                // Input streams from standard input, one JSON value a line: client-streaming and bidirectional.
                let sum = try await runCLI(["call", "e3", "sum", "null", "--input", "-"], busDirectory: directory, input: Data("1\n2\n\n3.5\n".utf8))
                #expect(sum.status == 0, "\(sum.errors)")
                #expect(sum.output == "6.5\n", "\(sum.output)")
                let shout = try await runCLI(["call", "e3", "shout", "null", "--input", "-"], busDirectory: directory, input: Data("\"a\"\n\"bc\"\n".utf8))
                #expect(shout.output == "\"A\"\n\"BC\"\n", "\(shout.output)\(shout.errors)")
                let bad = try await runCLI(["call", "e3", "sum", "null", "--input", "-"], busDirectory: directory, input: Data("1\nnope\n".utf8))
                #expect(bad.status == 1)
                #expect(bad.errors.contains("input 2 is not JSON: nope"), "\(bad.errors)")

                // A descriptor in a reply: the echo service hands over a pipe it filled.
                struct EchoFile: Codable, Sendable { var text: String; var file: UnixDescriptor }
                let echo = try await temporary.bus.connect(to: "e3", timeout: .seconds(10))
                let file = try await echo.call("file", "through a pipe", returning: EchoFile.self)
                let fd = file.file.take()
                var bytes = [UInt8](repeating: 0, count: 64)
                let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                close(fd)
                #expect(String(decoding: bytes.prefix(max(count, 0)), as: UTF8.self) == "through a pipe")
                await echo.close()

                kill(watch.processIdentifier, SIGTERM)
                for await _ in watchExit {}
                try? watchOut.fileHandleForReading.close()
                try? watchErr.fileHandleForReading.close()
                _ = try await runCLI(["call", "e3", "exit", "0"], busDirectory: directory)
                for await _ in echoExit {}
                try? echoOut.fileHandleForReading.close()
                try? echoErr.fileHandleForReading.close()
            }
        }
    }
}
