// The interface of a calculator service: a distributed actor protocol. Clients
// import only this module; `@Resolvable` generates `$Calculator`, a stub they
// resolve without linking any implementation.
public import Distributed
public import Intercom

/// A calculator living in another process.
@Resolvable
public protocol Calculator: DistributedActor where ActorSystem == IntercomActorSystem {
    /// `a + b`.
    distributed func add(_ a: Int, _ b: Int) -> Int
    /// `a / b`; throws ``CalculatorError/divisionByZero(dividend:)``.
    distributed func divide(_ a: Int, by b: Int) throws -> Int
    /// Waits `milliseconds` (cancellable); returns how long it was asked to wait.
    distributed func wait(milliseconds: Int) async throws -> Int
    /// Throws an error that is not Codable.
    distributed func failPlainly() throws
}

/// What a calculator throws; Codable, so callers get it back as itself.
public enum CalculatorError: Error, Codable, Equatable, Sendable {
    case divisionByZero(dividend: Int)
}

/// A concrete distributed actor with a generic distributed function. (Generic
/// requirements in a `@Resolvable` protocol crash the Swift 6.3 runtime when
/// called through the stub, so generics are shown on a concrete type.)
public distributed actor Echoer {
    public typealias ActorSystem = IntercomActorSystem

    /// Returns its argument, whatever Codable type it is.
    public distributed func echo<Value: Codable & Sendable>(_ value: Value) -> Value { value }

    /// Returns the pair swapped.
    public distributed func swap<A: Codable & Sendable, B: Codable & Sendable>(_ a: A, _ b: B) -> [String] {
        ["\(b)", "\(a)"]
    }
}
