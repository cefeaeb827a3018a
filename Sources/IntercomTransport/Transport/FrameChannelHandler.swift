internal import IntercomWire
internal import Logging
package import NIOCore

/// The channel handler under ``NIOFrameTransport``: cuts frames from the byte
/// stream, hands them to the receiver, holds reads back while paused, and closes
/// the channel (after telling the peer why) on a protocol violation.
package final class FrameChannelHandler: ChannelDuplexHandler, @unchecked Sendable {
    // @unchecked: every stored property is touched only on the channel's event loop.
    package typealias InboundIn = ByteBuffer
    package typealias OutboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer

    weak var transport: NIOFrameTransport?
    private var receiver: (any FrameReceiver)?
    /// Changes whenever `receiver` does: a read's decoding loop holds the
    /// receiver in a local (one retain per read, not per frame) and looks here
    /// after each frame, since the handshake hands over to the peer mid-read.
    private var receiverGeneration = 0
    private let decoder: FrameDecoder
    private let logger: Logger
    private var cumulation: ByteBuffer?
    private var context: ChannelHandlerContext?
    private var activated = false
    private var failed = false
    private var pauseReasons: ReadPauseReason = []
    private var readRequested = false
    private var closedNotified = false

    init(limits: WireLimits, logger: Logger) {
        self.decoder = FrameDecoder(limits: limits)
        self.logger = logger
    }

    func setReceiver(_ receiver: any FrameReceiver) {
        // After the end a receiver is not kept: it (a peer) holds the transport,
        // which holds this handler, and nothing would break that cycle. Whoever
        // sets one that late learns of the end from the channel itself.
        guard !self.closedNotified else { return }
        self.receiver = receiver
        self.receiverGeneration &+= 1
        if let context, context.channel.isActive { self.activate() }
    }

    private func activate() {
        guard !self.activated, let receiver = self.receiver else { return }
        self.activated = true
        receiver.transportActive()
        if let context, self.cumulation != nil { self.decodeFrames(context: context) }
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { self.activate() }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    package func channelActive(context: ChannelHandlerContext) {
        self.activate()
        context.fireChannelActive()
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        guard !self.failed else { return }
        guard self.activated else {
            // No receiver yet: keep everything for when there is one.
            if self.cumulation == nil {
                self.cumulation = bytes
            } else {
                self.cumulation!.writeBuffer(&bytes)
            }
            return
        }
        self.decodeFrames(context: context, arriving: bytes)
    }

    /// Decodes and delivers every whole frame of what was kept and `arriving`,
    /// and keeps the incomplete rest.
    ///
    /// A frame cut by the end of the last read is completed with only the bytes
    /// it lacks; the rest of the read is decoded where NIO put it. (Appending
    /// each read to the kept bytes copied nearly every read once more: small
    /// frames rarely end where a read does.) The handler's state is read once
    /// per read, not per frame.
    private func decodeFrames(context: ChannelHandlerContext, arriving: ByteBuffer? = nil) {
        var delivery = Delivery(receiver: self.receiver, generation: self.receiverGeneration)
        var input = arriving ?? ByteBuffer()
        do throws(ProtocolError) {
            if var kept = self.cumulation.take() {
                try self.complete(&kept, from: &input)
                try self.deliverFrames(from: &kept, to: &delivery)
                if kept.readableBytes > 0 {
                    // An incomplete frame: `input` is empty, or (bytes kept from before
                    // the receiver came, which may hold several frames) carries on from it.
                    kept.writeBuffer(&input)
                    try self.deliverFrames(from: &kept, to: &delivery)
                    if kept.readerIndex > 256 * 1024 { kept.discardReadBytes() }
                    if kept.readableBytes > 0 { self.cumulation = kept }
                    delivery.receiver?.endOfReadBatch()
                    return
                }
            }
            try self.deliverFrames(from: &input, to: &delivery)
        } catch {
            self.fail(error, context: context)
            return
        }
        if input.readableBytes > 0 {
            // The start of a frame: copied out of NIO's (large) read buffer, so
            // that buffer is not held for the few bytes still wanted from it.
            var start = ByteBuffer()
            // Room for the whole frame, up to 64 KiB (a header alone must not make
            // this side reserve a maximum-size frame); larger frames grow as they come.
            start.reserveCapacity(min(FrameDecoder.bytesMissing(in: input) + input.readableBytes, 64 << 10))
            start.writeBuffer(&input)
            self.cumulation = start
        }
        delivery.receiver?.endOfReadBatch()
    }

    /// Who gets the frames of one read, re-read only when it changed.
    private struct Delivery {
        var receiver: (any FrameReceiver)?
        var generation: Int
    }

    /// Moves into `kept` (an incomplete frame, or bytes kept from before the
    /// receiver came) the bytes of `input` that its first frame lacks, checking
    /// the header as soon as it is whole.
    private func complete(_ kept: inout ByteBuffer, from input: inout ByteBuffer) throws(ProtocolError) {
        while input.readableBytes > 0 {
            let missing = FrameDecoder.bytesMissing(in: kept)
            guard missing > 0 else { return }
            var head = input.readSlice(length: min(missing, input.readableBytes))!
            kept.writeBuffer(&head)
            if FrameDecoder.bytesMissing(in: kept) > 0 {
                _ = try self.decoder.next(from: &kept)  // throws if the header is bad; nil otherwise
            }
        }
    }

    /// Decodes and delivers the whole frames at the front of `buffer`.
    private func deliverFrames(from buffer: inout ByteBuffer, to delivery: inout Delivery) throws(ProtocolError) {
        while let frame = try self.decoder.next(from: &buffer) {
            #if os(Linux)
            if frame.flags.contains(.descriptors) {
                var flagged = frame
                guard let transport = self.transport else { continue }
                flagged.descriptors = try transport.receiveDescriptors()
                delivery.receiver?.receive(flagged)
                continue
            }
            #endif
            delivery.receiver?.receive(frame)
            if self.receiverGeneration != delivery.generation {
                // The handshake handed the connection to its peer.
                delivery = Delivery(receiver: self.receiver, generation: self.receiverGeneration)
            }
        }
    }

    private func fail(_ error: ProtocolError, context: ChannelHandlerContext) {
        self.failed = true
        self.transport?.turnOffDirectWrites()  // the error frame below bypasses the outbox
        self.cumulation = nil
        self.logger.warning(
            "closing connection after a protocol violation",
            metadata: ["error": "\(error)", "remote": "\(context.channel.remoteAddress.map { "\($0)" } ?? "local")"])
        self.receiver?.transportFailed(error)
        // Read nothing more: whatever else the peer sends is not ours to buffer.
        self.pauseReasons.insert(.violation)
        // Tell the other side why, then close. Id 0: the error concerns the connection.
        // A peer that does not read would hold that write (and the connection)
        // forever, so the close comes after a short grace whether or not it went out.
        let buffer = ErrorBody(connectionError: error).frame(id: 0)
        let channel = context.channel
        let grace = channel.eventLoop.scheduleTask(in: Self.violationGrace) { channel.close(promise: nil) }
        context.writeAndFlush(NIOAny(buffer)).whenComplete { _ in
            grace.cancel()
            channel.close(promise: nil)
        }
    }

    /// How long the error frame after a protocol violation may take to go out
    /// before the connection closes anyway.
    static let violationGrace: TimeAmount = .milliseconds(500)

    package func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.transport?.writabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func notifyWritable() {
        self.receiver?.transportWritable()
    }

    package func channelInactive(context: ChannelHandlerContext) {
        self.notifyClosed()
        context.fireChannelInactive()
    }

    private func notifyClosed() {
        guard !self.closedNotified else { return }
        self.closedNotified = true
        self.transport?.markClosed()
        self.receiver?.transportClosed()
        // Break the cycle receiver (a peer) -> transport -> this handler, and drop
        // any partial frame: nothing more will be read.
        self.receiver = nil
        self.receiverGeneration &+= 1
        self.cumulation = nil
    }

    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Connection reset and the like: the stream is over.
        self.logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            // Half-closed by the other side: nothing more will arrive.
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    package func read(context: ChannelHandlerContext) {
        if self.pauseReasons.isEmpty {
            context.read()
        } else {
            self.readRequested = true
        }
    }

    func setReadingPaused(_ paused: Bool, reason: ReadPauseReason) {
        if paused {
            self.pauseReasons.insert(reason)
        } else {
            self.pauseReasons.remove(reason)
            if self.pauseReasons.isEmpty, self.readRequested, let context = self.context {
                self.readRequested = false
                context.read()
            }
        }
    }
}
