extension ServiceSchema: CustomStringConvertible {
    /// What `intercom describe` prints: one line per method, then the named types.
    ///
    /// ```text
    /// sensors.read(String) -> Reading
    /// sensors.watch(String) -> stream of Reading
    ///
    /// Reading { sensor: String, value: Double, calibration: Calibration? }
    /// Unit = String: celsius | kelvin
    /// Command = move(x: Int64, y: Int64) | stop
    /// ```
    public var description: String {
        var lines = self.methods.map(\.description)
        if !self.types.isEmpty {
            lines.append("")
            for name in self.types.keys.sorted() {
                let type = self.types[name]!
                lines.append("\(name) \(type)")
                if let note = type.note { lines.append("  (\(note))") }
            }
        }
        return lines.joined(separator: "\n")
    }
}

extension MethodSchema: CustomStringConvertible {
    /// `name(Argument) -> Result`, with the streams spelled out.
    public var description: String {
        let input = self.input.map { ", stream of \($0)" } ?? ""
        let output: String =
            switch self.kind {
            case .serverStream, .bidirectionalStream: "stream of \(self.item.map(\.description) ?? "?")"
            case .call, .clientStream: self.result.description
            }
        return "\(self.name)(\(self.argument)\(input)) -> \(output)"
    }
}

extension TypeSchema: CustomStringConvertible {
    /// The layout after the type's name: `{ a: Int64, b: String? }`, `= String: a | b`, `= a(x: Int64) | b`.
    public var description: String {
        switch self.layout {
        case .record(let fields):
            fields.isEmpty ? "{}" : "{ \(Self.fields(fields)) }"
        case .cases(let cases):
            "= "
                + cases.keys.sorted().map { name in
                    cases[name]!.isEmpty ? name : "\(name)(\(Self.fields(cases[name]!)))"
                }.joined(separator: " | ")
        case .enumeration(let raw, let values):
            "= \(raw): \(values.joined(separator: " | "))"
        case .value(let shape):
            "= \(shape)"
        case .sequence(let shapes):
            "= (\(shapes.map(\.description).joined(separator: ", ")))"
        }
    }

    private static func fields(_ fields: [WireField]) -> String {
        fields.map { "\($0.name): \($0.shape)\($0.required ? "" : "?")" }.joined(separator: ", ")
    }
}
