import Foundation
import Intercom
import IntercomCore
import NIOCore
import Testing

/// The monitor's queue in a service is bounded in records and in bytes, and
/// counts what it drops; offering never waits.
struct TrafficTapTests {
    private func record(_ index: Int) -> TrafficRecord {
        TrafficRecord(
            kind: .call, time: Date(), service: "s", caller: "c", callerPID: 1, method: "m\(index)", codec: "binary",
            requestBytes: 0, replyBytes: nil, microseconds: 1, error: nil)
    }

    @Test func theQueueHoldsAtMostItsRecordsAndDropsTheRest() async {
        let tap = TrafficTap()
        #expect(!tap.isActive)
        let subscription = tap.attach(payloadBytes: 0)
        #expect(tap.isActive)
        for index in 0..<(TrafficTap.queueLimit + 500) { tap.record(self.record(index), request: nil, reply: nil) }
        let batch = await subscription.next()
        #expect(batch?.records.count == TrafficTap.queueLimit)
        #expect(batch?.dropped == 500)
        #expect(batch?.records.first?.method == "m0", "the oldest are kept, the newest dropped")
        tap.detach(subscription)
        #expect(!tap.isActive)
        #expect(await subscription.next() == nil)
    }

    @Test func theQueueHoldsAtMostItsBytesOfPayloadCopies() async {
        let tap = TrafficTap()
        let subscription = tap.attach(payloadBytes: MonitorRequest.maxPayloadBytes)
        let payload = ByteBuffer(repeating: 7, count: 64 << 10)  // cut to 16 KiB a copy
        for index in 0..<1000 { tap.record(self.record(index), request: payload, reply: payload) }
        let batch = await subscription.next()
        let perRecord = 256 + 2 * MonitorRequest.maxPayloadBytes
        #expect(batch?.records.count == TrafficTap.queueByteLimit / perRecord)
        #expect(batch?.records.first?.request?.count == MonitorRequest.maxPayloadBytes)
        #expect((batch?.records.count ?? 0) + (batch?.dropped ?? 0) == 1000)
        tap.detach(subscription)
    }
}
