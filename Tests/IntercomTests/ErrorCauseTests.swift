import Intercom
import IntercomTestSupport
import IntercomTesting
import NIOCore
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// An `IntercomError` that stands for another error keeps it as its `cause`.
@Suite struct ErrorCauseTests {
    struct Unencodable: Encodable {
        struct Refused: Error, Equatable {}
        func encode(to encoder: any Encoder) throws { throw Refused() }
    }

    @Test func aCodecsErrorIsTheCauseOfInvalidPayload() async throws {
        try await withResourceCheck {
            let second = Router()
            try second.register("count") { (values: [Int], _: CallContext) in values.count }
            let connection = try await InMemoryConnection.open(second: second)
            do {
                _ = try await connection.first.call("count", Unencodable(), returning: Int.self)
                Issue.record("the call encoded")
            } catch let error as IntercomError {
                #expect(error.code == .invalidPayload)
                #expect(error.cause is Unencodable.Refused, "cause: \(String(describing: error.cause))")
            }
            // The handler's side: a payload that does not decode as [Int].
            do {
                _ = try await connection.first.call("count", UInt8(1), returning: Int.self)  // a count of 1, then no element
                Issue.record("the call decoded")
            } catch let error as IntercomError {
                #expect(error.code == .invalidPayload)  // as reported by the other side: no cause crosses the wire
                #expect(error.cause == nil)
            }
            await connection.close()
        }
    }

    @Test func aSystemCallsErrorIsTheCauseOfConnectionFailed() async throws {
        try await withResourceCheck {
            do {
                _ = try await Peer.connect(unixPath: "/tmp/intercom-no-such-socket-\(UInt32.random(in: 0...UInt32.max))")
                Issue.record("connected to nothing")
            } catch let error as IntercomError {
                #expect(error.code == .connectionFailed)
                #expect((error.cause as? IOError)?.errnoCode == ENOENT, "cause: \(String(describing: error.cause))")
            }
        }
    }

    @Test func causesDoNotTakePartInEquality() {
        let plain = IntercomError(.timeout, "late")
        var caused = plain
        caused.cause = Unencodable.Refused()
        #expect(plain == caused)
        #expect(plain.hashValue == caused.hashValue)
    }
}
