import Foundation
import Intercom
import IntercomTestSupport
import Testing

/// `intercom demo` end to end, in short mode, on a private bus.
@Suite(.serialized) struct DemoTests {
    @Test func theDemoRunsKillsRestartsQuitsAndReapsEverything() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let run = try await runCLI(["demo", "--duration", "4"], busDirectory: temporary.directory)
                #expect(run.status == 0, "\(run.output)\n\(run.errors)")
                #expect(run.output.contains("▶ camera started"))
                #expect(run.output.contains("⚡ killing the processor"))
                #expect(run.output.contains("died: signaled(9)"))
                #expect(run.output.contains("↻ restarting processor"))
                #expect(run.output.contains("quit acknowledged by: camera, processor"))
                #expect(run.output.contains("all reaped"))
                // Frames flowed and the processor called back into the camera.
                let lines = run.output.split(separator: "\n").filter { $0.hasPrefix("[") }
                #expect(lines.count == 4)
                #expect(lines.last?.contains("restarts 1") == true, "\(lines)")
                #expect(!(lines.last?.contains("camera:     0 frames") ?? true))
                // Every worker pid it printed is gone.
                let children = run.output.split(separator: "\n").first { $0.hasPrefix("children: ") } ?? ""
                let pids = children.dropFirst(10).split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .punctuationCharacters)) }
                #expect(pids.count == 3, "camera, processor and its restart: \(children)")
                for pid in pids { #expect(!isAlive(pid), "worker \(pid) is still alive") }
            }
        }
    }
}
