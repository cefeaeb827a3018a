/// The names types go by in a schema: the short name (`Reading`) unless
/// another type took it first, then the full one (`Sensors.Reading`,
/// module-qualified) — a snapshot stays readable and does not depend on module
/// names, and two types never share a description.
struct TypeNames: Sendable {
    private var owners: [String: ObjectIdentifier] = [:]

    mutating func name(for type: Any.Type) -> String {
        let id = ObjectIdentifier(type)
        let short = _typeName(type, qualified: false)
        if let owner = self.owners[short], owner != id {
            let full = _typeName(type, qualified: true)
            self.owners[full] = id
            return full
        }
        self.owners[short] = id
        return short
    }
}
