#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
@_spi(IntercomInternals) package import IntercomTransport
internal import Synchronization
internal import NIOCore

extension Router {
    /// The name of the built-in stream a monitor opens to watch a service's traffic.
    package static let monitorMethod = "intercom.monitor"

    /// Registers ``monitorMethod``: a server stream of ``TrafficBatch``es, one
    /// per wake-up, cut to about 1 MiB — for local callers only (kernel
    /// credentials; a network connection is refused with `permissionDenied`). The stream's flow control paces it; while
    /// the monitor does not read, the tap drops and counts (TrafficTap.swift).
    package func registerMonitor() throws(IntercomError) {
        let traffic = self.traffic
        try self.registerStream(Self.monitorMethod) { (request: MonitorRequest, context: CallContext, out: StreamWriter<TrafficBatch>) in
            // Payloads of other processes' calls: only for a local process the kernel vouches
            // for (the bus admits its own user by default), never over TCP or TLS.
            guard context.peer.remote.credentials != nil else {
                throw IntercomError(
                    .permissionDenied, "monitoring is for local processes only: connect to the service on its bus, not by address")
            }
            context.peer.isMonitorConnection.store(true, ordering: .relaxed)
            let subscription = traffic.attach(payloadBytes: request.payloadBytes)
            defer { traffic.detach(subscription) }
            // An empty batch first: the monitor knows from it that it is attached.
            try await out.send(TrafficBatch(records: [], dropped: 0, connections: traffic.connections))
            while let batch = await subscription.next() {
                var chunk: [TrafficRecord] = []
                var bytes = 0
                var dropped = batch.dropped
                for record in batch.records {
                    chunk.append(record)
                    bytes += record.queuedSize
                    if bytes >= 1 << 20 {
                        try await out.send(TrafficBatch(records: chunk, dropped: dropped, connections: traffic.connections))
                        (chunk, bytes, dropped) = ([], 0, 0)
                    }
                }
                if !chunk.isEmpty || dropped > 0 {
                    try await out.send(TrafficBatch(records: chunk, dropped: dropped, connections: traffic.connections))
                }
            }
        }
    }
}

extension TrafficTap {
    /// Shows an event a service published (its payload as JSON, encoded only while a monitor is attached).
    package func recordEvent<Value: Encodable>(service: String, topic: String, _ value: Value) {
        guard self.isActive else { return }
        let payload = (try? JSONEncoder().encode(value)).map { ByteBuffer(bytes: $0) }
        let record = TrafficRecord(
            kind: .event, time: Date(), service: service, caller: "", callerPID: nil, method: topic, codec: "json",
            requestBytes: payload?.readableBytes ?? 0, replyBytes: nil, microseconds: nil, error: nil)
        self.record(record, request: payload, reply: nil)
    }
}
