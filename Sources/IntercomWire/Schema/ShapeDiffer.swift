/// Walks two versions of a shape side by side and lists their differences
/// (SchemaCompatibility.swift says how they are judged).
struct ShapeDiffer {
    let old: ServiceSchema
    let new: ServiceSchema
    let codec: SchemaCompatibility.Codec
    /// Pairs of named types already compared (recursive types end here).
    private var visited: Set<[String]> = []

    init(old: ServiceSchema, new: ServiceSchema, codec: SchemaCompatibility.Codec) {
        self.old = old
        self.new = new
        self.codec = codec
    }

    mutating func compare(_ before: WireShape, _ after: WireShape, at path: String) -> [ShapeDifference] {
        let before = self.unwrapValue(before, in: self.old)
        let after = self.unwrapValue(after, in: self.new)
        switch (before, after) {
        case (.primitive(let a), .primitive(let b)):
            guard a != b else { return [] }
            return [
                ShapeDifference(
                    path: path, change: "retyped from \(a.rawValue) to \(b.rawValue)",
                    breaksNewReader: !self.readable(writer: a, reader: b), breaksOldReader: !self.readable(writer: b, reader: a))
            ]
        case (.optional(let a), .optional(let b)):
            return self.compare(a, b, at: path)
        case (.optional(let a), _):
            // A presence byte in the binary codec; in JSON only a null the new reader refuses.
            let change = ShapeDifference(
                path: path, change: "no longer optional", breaksNewReader: true, breaksOldReader: self.codec == .binary)
            return [change] + self.compare(a, after, at: path)
        case (_, .optional(let b)):
            let change = ShapeDifference(
                path: path, change: "became optional", breaksNewReader: self.codec == .binary, breaksOldReader: true)
            return [change] + self.compare(before, b, at: path)
        case (.array(let a), .array(let b)):
            return self.compare(a, b, at: path + "[]")
        case (.dictionary(let ak, let av), .dictionary(let bk, let bv)):
            return self.compare(ak, bk, at: path + "[key]") + self.compare(av, bv, at: path + "[value]")
        case (.named(let a), .named(let b)):
            guard let oldType = self.old.types[a], let newType = self.new.types[b] else {
                return a == b ? [] : [self.retyped(path, before, after)]
            }
            guard self.visited.insert([a, b]).inserted else { return [] }
            return self.compare(oldType.layout, newType.layout, at: path)
        default:
            return [self.retyped(path, before, after)]
        }
    }

    private func retyped(_ path: String, _ before: WireShape, _ after: WireShape) -> ShapeDifference {
        ShapeDifference(path: path, change: "retyped from \(before) to \(after)", breaksNewReader: true, breaksOldReader: true)
    }

    /// A named type written as one value of another shape compares as that shape.
    private func unwrapValue(_ shape: WireShape, in schema: ServiceSchema) -> WireShape {
        if case .named(let name) = shape, case .value(let inner)? = schema.types[name]?.layout { return inner }
        return shape
    }

    /// Whether a reader of `reader` accepts what a writer of `writer` writes:
    /// the same scalar, or a wider integer of the same sign (single-byte integers
    /// are not varints in the binary codec, so only JSON widens them).
    private func readable(writer: WireShape.Primitive, reader: WireShape.Primitive) -> Bool {
        if writer == reader { return true }
        guard let w = writer.integer, let r = reader.integer, w.signed == r.signed, r.bits >= w.bits else { return false }
        return self.codec == .json || w.bits > 8
    }

    private mutating func compare(_ before: TypeSchema.Layout, _ after: TypeSchema.Layout, at path: String) -> [ShapeDifference] {
        switch (before, after) {
        case (.record(let a), .record(let b)):
            return self.compare(fields: a, b, at: path)
        case (.cases(let a), .cases(let b)):
            var differences: [ShapeDifference] = []
            for name in Set(a.keys).union(b.keys).sorted() {
                switch (a[name], b[name]) {
                case (let fields?, let newFields?):
                    differences += self.compare(fields: fields, newFields, at: "\(path).\(name)")
                case (nil, _?):
                    // A new writer may send it; an old reader does not know it.
                    differences.append(
                        ShapeDifference(path: path, change: "case '\(name)' added", breaksNewReader: false, breaksOldReader: true))
                case (_?, nil):
                    differences.append(
                        ShapeDifference(path: path, change: "case '\(name)' removed", breaksNewReader: true, breaksOldReader: false))
                case (nil, nil):
                    break
                }
            }
            return differences
        case (.enumeration(let rawA, let valuesA), .enumeration(let rawB, let valuesB)):
            var differences = self.compare(rawA, rawB, at: path)
            for value in valuesB where !valuesA.contains(value) {
                differences.append(ShapeDifference(path: path, change: "value '\(value)' added", breaksNewReader: false, breaksOldReader: true))
            }
            for value in valuesA where !valuesB.contains(value) {
                differences.append(ShapeDifference(path: path, change: "value '\(value)' removed", breaksNewReader: true, breaksOldReader: false))
            }
            return differences
        case (.value(let a), .value(let b)):
            return self.compare(a, b, at: path)
        case (.sequence(let a), .sequence(let b)):
            guard a.count == b.count else {
                return [
                    ShapeDifference(
                        path: path, change: "sequence of \(a.count) values became \(b.count)", breaksNewReader: true, breaksOldReader: true)
                ]
            }
            return zip(a, b).enumerated().flatMap { index, pair in self.compare(pair.0, pair.1, at: "\(path)[\(index)]") }
        default:
            return [
                ShapeDifference(
                    path: path, change: "layout changed from \(Self.kind(before)) to \(Self.kind(after))", breaksNewReader: true,
                    breaksOldReader: true)
            ]
        }
    }

    private mutating func compare(fields before: [WireField], _ after: [WireField], at path: String) -> [ShapeDifference] {
        var differences: [ShapeDifference] = []
        let newByName = Dictionary(after.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let oldByName = Dictionary(before.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        // Binary readers take fields in order and refuse one they do not know, even an optional one when present.
        let unknownBreaks = self.codec == .binary
        for field in before where newByName[field.name] == nil {
            differences.append(
                ShapeDifference(
                    path: "\(path).\(field.name)", change: "field removed (it was \(field.required ? "required" : "optional"))",
                    breaksNewReader: unknownBreaks, breaksOldReader: field.required))
        }
        for field in after where oldByName[field.name] == nil {
            differences.append(
                ShapeDifference(
                    path: "\(path).\(field.name)", change: "field added, \(field.required ? "required" : "optional")",
                    breaksNewReader: field.required, breaksOldReader: unknownBreaks))
        }
        for field in before {
            guard let newField = newByName[field.name] else { continue }
            let place = "\(path).\(field.name)"
            if field.required && !newField.required {
                differences.append(ShapeDifference(path: place, change: "became optional", breaksNewReader: false, breaksOldReader: true))
            } else if !field.required && newField.required {
                differences.append(ShapeDifference(path: place, change: "became required", breaksNewReader: true, breaksOldReader: false))
            }
            differences += self.compare(field.shape, newField.shape, at: place)
        }
        if self.codec == .binary {
            let common = Set(oldByName.keys).intersection(newByName.keys)
            let oldOrder = before.map(\.name).filter(common.contains)
            let newOrder = after.map(\.name).filter(common.contains)
            if oldOrder != newOrder {
                differences.append(
                    ShapeDifference(
                        path: path, change: "fields reordered (\(oldOrder.joined(separator: ", ")) → \(newOrder.joined(separator: ", ")))",
                        breaksNewReader: true, breaksOldReader: true))
            }
        }
        return differences
    }

    private static func kind(_ layout: TypeSchema.Layout) -> String {
        switch layout {
        case .record: "record"
        case .cases: "enum with cases"
        case .enumeration: "raw-value enum"
        case .value: "single value"
        case .sequence: "sequence"
        }
    }
}
