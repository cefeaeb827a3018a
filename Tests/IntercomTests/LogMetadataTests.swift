import InMemoryLogging
import Intercom
import IntercomTestSupport
import IntercomTesting
import Logging
import Testing

/// The library's log lines say which connection they are about: the service
/// (this side's name), the peer (the other's name and pid) and, for a call,
/// its method — read with swift-log's in-memory handler.
@Suite struct LogMetadataTests {
    @Test func aConnectionsLogLinesCarryServicePeerAndMethod() async throws {
        try await withResourceCheck {
            let logs = InMemoryLogHandler()
            let router = Router()
            try router.register("notes.file") { (_: Int, _: CallContext) in throw IntercomError(.invalidPayload, "no room") }
            var server = Peer.Configuration(name: "archive")
            server.handlerExecution = .connectionThread
            server.logger = Logger(label: "test", factory: { _ in logs })
            let connection = try await InMemoryConnection.open(
                second: router, configuration: Peer.Configuration(name: "clerk"), secondConfiguration: server)
            try await connection.first.send("notes.file", 1)
            await connection.settle()

            let entry = try #require(logs.entries.first { $0.message.description == "handler of one-way message failed" })
            #expect(entry.level == .warning)
            #expect(entry.metadata["service"] == "archive")
            #expect(entry.metadata["peer"] == "clerk")
            #expect(entry.metadata["peer.pid"] != nil)
            #expect(entry.metadata["method"] == "notes.file")
            #expect(entry.metadata["error"]?.description.contains("no room") == true)
            await connection.close()
        }
    }
}
