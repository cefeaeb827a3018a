import Foundation
import Intercom
import IntercomTestSupport
import IntercomTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The command line across hosts: `echo --listen tls://…`, and `call`, `ping`,
/// `list` and `watch` given an address and the TLS files instead of a name.
@Suite struct CLINetworkTests {
    @Test func echoServesAnAddressAndTheCommandsReachItByAddress() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let files = TemporaryDirectory.shared.socketPath() + ".tls"
                try FileManager.default.createDirectory(atPath: files, withIntermediateDirectories: false)
                defer { try? FileManager.default.removeItem(atPath: files) }
                let server = try TestCertificateAuthority.shared.writeFiles(commonName: "echo-server", into: files)
                let client = try TestCertificateAuthority.shared.writeFiles(commonName: "cli-client", into: files)
                let serverTLS = ["--tls-cert", server.certificate, "--tls-key", server.key, "--tls-ca", server.ca]
                let clientTLS = ["--tls-cert", client.certificate, "--tls-key", client.key, "--tls-ca", client.ca]

                let (_, echoOut, echoErr, echoExit) = try startCLI(
                    ["echo", "--name", "e2", "--listen", "tls://127.0.0.1:0"] + serverTLS, busDirectory: temporary.directory)
                let info = try await temporary.bus.waitForService("e2", timeout: .seconds(30))
                let address = try #require(info.addresses?.first)
                // Nothing below names the bus: an address is all a remote host knows.
                let called = try await runCLI(["call", address, "echo", #"{"a":1}"#] + clientTLS, busDirectory: nil)
                #expect(called.status == 0, "\(called.errors)")
                #expect(called.output == "{\"a\":1}\n")
                let ping = try await runCLI(["ping", address, "--count", "2"] + clientTLS, busDirectory: nil)
                #expect(ping.status == 0, "\(ping.errors)")
                #expect(ping.output.contains("2 pings: min"))
                let listed = try await runCLI(["list", address] + clientTLS, busDirectory: nil)
                #expect(listed.output.contains("e2") && listed.output.contains("echo, exit, fail, file, shout, sleep, sum"), "\(listed.output)")
                #expect(listed.output.contains("ADDRESSES") && listed.output.contains(address), "\(listed.output)")
                let (watch, watchOut, watchErr, watchExit) = try startCLI(
                    ["watch", "--service", address, "tick"] + clientTLS, busDirectory: nil)
                let line = await readOutput(of: watchOut, until: "\n")
                #expect(line.contains(" \(address) tick {\"count\":"), "\(line)")
                kill(watch.processIdentifier, SIGTERM)
                for await _ in watchExit {}
                try? watchOut.fileHandleForReading.close()
                try? watchErr.fileHandleForReading.close()

                // Without TLS settings, and with a certificate of another authority: clear refusals.
                let bare = try await runCLI(["call", address, "echo", "1"], busDirectory: nil)
                #expect(bare.status == 1)
                #expect(bare.errors.contains("invalidConfiguration") && bare.errors.contains("TLS is not configured"), "\(bare.errors)")
                let strangerFiles = files + "/stranger"
                try FileManager.default.createDirectory(atPath: strangerFiles, withIntermediateDirectories: false)
                let stranger = try TestCertificateAuthority(name: "Other CA").writeFiles(commonName: "stranger", into: strangerFiles)
                let refused = try await runCLI(
                    ["call", address, "echo", "1", "--tls-cert", stranger.certificate, "--tls-key", stranger.key, "--tls-ca", client.ca],
                    busDirectory: nil)
                #expect(refused.status == 1)
                #expect(refused.errors.contains("authenticationFailed"), "\(refused.errors)")

                let exited = try await runCLI(["call", address, "exit", "0"] + clientTLS, busDirectory: nil)
                #expect(exited.output == "true\n")
                for await _ in echoExit {}
                try? echoOut.fileHandleForReading.close()
                try? echoErr.fileHandleForReading.close()
            }
        }
    }
}
