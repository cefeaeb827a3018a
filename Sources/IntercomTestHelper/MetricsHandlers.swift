import Intercom
import MetricsTestKit

/// The helper's own metrics backend (`--metrics`): what it records as a
/// server, which a test reads back with `metrics.count`.
let helperMetrics = TestMetrics()

/// Asks for the total of a counter with these dimensions, in order.
public struct CounterQuery: Codable, Sendable {
    public var label: String
    public var dimensions: [[String]]

    public init(label: String, dimensions: [(String, String)]) {
        self.label = label
        self.dimensions = dimensions.map { [$0.0, $0.1] }
    }
}

func registerMetricsHandlers(on router: Router) throws {
    try router.register("metrics.count") { (query: CounterQuery, _: CallContext) -> Int64 in
        helperMetrics.counterTotal(label: query.label, dimensions: query.dimensions.map { ($0[0], $0[1]) })
    }
}
