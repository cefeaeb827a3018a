@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomCore
internal import IntercomBus
public import Distributed
internal import IntercomWire
internal import NIOCore
internal import Synchronization

/// Records a distributed call's generic arguments and arguments (binary codec).
public struct IntercomInvocationEncoder: DistributedTargetInvocationEncoder {
    /// Arguments and results are `Codable` values.
    public typealias SerializationRequirement = any Codable

    var generics: [String] = []
    var arguments: [[UInt8]] = []
    /// The first argument that failed to encode (thrown when the call is sent).
    var encodingError: IntercomError?

    /// Records a generic argument by its mangled name.
    public mutating func recordGenericSubstitution<T>(_ type: T.Type) throws {
        guard let name = _mangledTypeName(T.self) else {
            throw IntercomError(.invalidPayload, "generic argument \(T.self) has no mangled name to send")
        }
        self.generics.append(name)
    }

    /// Records one argument.
    public mutating func recordArgument<Value: Codable>(_ argument: RemoteCallArgument<Value>) throws {
        do {
            self.arguments.append(Array(buffer: try BinaryEncoder().encode(argument.value)))
        } catch {
            throw IntercomError(.invalidPayload, "argument \(argument.label ?? argument.name) (\(Value.self)) does not encode: \(error)")
        }
    }

    /// Not sent: the target knows its error type.
    public mutating func recordErrorType<E: Error>(_ type: E.Type) throws {}

    /// Not sent: the target knows its return type.
    public mutating func recordReturnType<R: Codable>(_ type: R.Type) throws {}

    /// Nothing left to do.
    public mutating func doneRecording() throws {}
}

/// Reads back what ``IntercomInvocationEncoder`` recorded, on the hosting side.
public struct IntercomInvocationDecoder: DistributedTargetInvocationDecoder {
    /// Arguments and results are `Codable` values.
    public typealias SerializationRequirement = any Codable

    let call: ActorCall
    let actorType: any DistributedActor.Type
    var nextArgument = 0

    init(call: ActorCall, actorType: any DistributedActor.Type) {
        self.call = call
        self.actorType = actorType
    }

    /// The generic arguments, looked up by mangled name.
    ///
    /// A caller that resolved a `@Resolvable` protocol records its stub type
    /// (`$Calculator`) as the target's `Self`; here `Self` is the actor that
    /// really implements the protocol, so the stub type is replaced by it.
    public mutating func decodeGenericSubstitutions() throws -> [Any.Type] {
        try self.call.generics.map { name in
            guard let type = knownTypes.type(named: name) else {
                throw IntercomError(.invalidPayload, "generic argument type '\(name)' is not known in this process")
            }
            if type is any _DistributedActorStub.Type { return self.actorType }
            return type
        }
    }

    /// The next argument.
    public mutating func decodeNextArgument<Argument: Codable>() throws -> Argument {
        guard self.nextArgument < self.call.arguments.count else {
            throw IntercomError(.invalidPayload, "\(self.call.target): fewer arguments than the target takes")
        }
        defer { self.nextArgument += 1 }
        do {
            return try BinaryDecoder().decode(Argument.self, from: ByteBuffer(bytes: self.call.arguments[self.nextArgument]))
        } catch {
            throw IntercomError(
                .invalidPayload, "argument \(self.nextArgument + 1) of \(self.call.target) does not decode as \(Argument.self): \(error)")
        }
    }

    /// Not sent.
    public mutating func decodeErrorType() throws -> Any.Type? { nil }

    /// Not sent.
    public mutating func decodeReturnType() throws -> Any.Type? { nil }
}

/// Collects what the hosted target returned or threw.
public final class IntercomResultHandler: DistributedTargetInvocationResultHandler, @unchecked Sendable {
    /// Arguments and results are `Codable` values.
    public typealias SerializationRequirement = any Codable
    // `reply` is written once by the target's invocation before `execute` reads it, in the same task.

    var reply: ActorReply?

    init() {}

    /// The target returned a value.
    public func onReturn<Success: Codable>(value: Success) async throws {
        self.reply = ActorReply(value: Array(buffer: try BinaryEncoder().encode(value)))
    }

    /// The target returned nothing.
    public func onReturnVoid() async throws {
        self.reply = ActorReply(value: [])
    }

    /// The target threw.
    public func onThrow<Err: Error>(error: Err) async throws {
        self.reply = ActorReply(error: ActorFailure(error))
    }
}

/// Types looked up by mangled name, remembered: demangling on every call is slow,
/// and the set of types a process sees in calls is small.
private let knownTypes = TypeCache()

private final class TypeCache: Sendable {
    private let types = Locked<[String: TypeBox]>([:])

    private struct TypeBox: @unchecked Sendable {
        // Metatypes are immutable; the box only lets them sit behind a lock.
        let type: Any.Type
    }

    func type(named name: String) -> Any.Type? {
        if let known = self.types.withLock({ $0[name] }) { return known.type }
        guard let type = _typeByName(name) else { return nil }
        self.types.withLock { $0[name] = TypeBox(type: type) }
        return type
    }
}
