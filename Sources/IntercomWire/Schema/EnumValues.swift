// Listing an enum's cases without an instance, for schemas (no IDL: the Swift
// type is the schema). `CaseIterable` says it when the type conforms. For the
// payload-free enums that do not — a raw-value enum, a synthesised `CodingKeys` —
// the cases are read from the type's layout: such an enum is its case number in
// one byte (declaration order), and `Optional` stores `nil` as the first number
// past the last case. Used only where the runtime says the type is an enum of
// that layout; anything else is not guessed at.

/// Whether the runtime's metadata for `type` is an enum's (kind 0x201), not
/// `Optional` (0x202), a struct or a class.
private func isPlainEnum(_ type: Any.Type) -> Bool {
    unsafeBitCast(type, to: UnsafePointer<Int>.self).pointee == 0x201
}

/// Every value of `type` if it is a payload-free enum, in declaration order; nil otherwise.
func payloadFreeEnumValues<T>(_ type: T.Type) -> [T]? {
    if let iterable = type as? any CaseIterable.Type {
        func all<C: CaseIterable>(_: C.Type) -> [Any] { C.allCases.map { $0 as Any } }
        return all(iterable).compactMap { $0 as? T }
    }
    guard isPlainEnum(type) else { return nil }
    if MemoryLayout<T>.size == 0 {
        // One case and no payload: no bits at all.
        return [withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 1) { UnsafeRawPointer($0.baseAddress!).load(as: T.self) }]
    }
    guard MemoryLayout<T>.size == 1, MemoryLayout<T?>.size == 1 else { return nil }
    var values: [T] = []
    for tag in UInt8(0)...UInt8(255) {
        let value = withUnsafeBytes(of: tag) { $0.load(as: T?.self) }
        guard let value else { break }
        values.append(value)
    }
    return values
}

/// The string values of the keys of `type` (a type's `CodingKeys`), or nil when they cannot be listed.
func codingKeyNames<Key: CodingKey>(_ type: Key.Type) -> [String]? {
    payloadFreeEnumValues(type)?.map(\.stringValue)
}
