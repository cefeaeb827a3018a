import Foundation
import Intercom
import IntercomTestSupport
import Testing

/// `intercom describe` and `intercom compat` against a real service process:
/// the schema comes from the helper's Swift types over the wire, a snapshot
/// round-trips through a file, and a breaking change fails the command.
@Suite(.serialized) struct CLISchemaTests {
    @Test func describeAndCompatEndToEnd() async throws {
        try await withTypedService { temporary, _, _ in

            let described = try await runCLI(["describe", "typed"], busDirectory: temporary.directory)
            #expect(described.status == 0, "\(described.errors)")
            #expect(described.output.contains("math.add(AddRequest) -> Int64"), "\(described.output)")
            #expect(described.output.contains("AddRequest { a: Int64, b: Int64 }"))
            #expect(described.output.contains("camera.exposure.set(SetExposure) -> "))
            #expect(!described.output.contains("intercom.quit"))

            let snapshotRun = try await runCLI(["describe", "typed", "--json"], busDirectory: temporary.directory)
            #expect(snapshotRun.status == 0)
            var snapshot = try JSONDecoder().decode(ServiceSchema.self, from: Data(snapshotRun.output.utf8))
            #expect(snapshot.method("math.add")?.argument == .named("AddRequest"))

            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("intercom-compat-\(getpid())")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let same = directory.appendingPathComponent("same.json")
            try Data(snapshotRun.output.utf8).write(to: same)
            let unchanged = try await runCLI(["compat", same.path, "typed"], busDirectory: temporary.directory)
            #expect(unchanged.status == 0, "\(unchanged.output)\(unchanged.errors)")
            #expect(unchanged.output.contains("no changes"))

            // An "old release" whose AddRequest had no `b`: the running service now requires it.
            snapshot.types["AddRequest"] = TypeSchema(.record([WireField(name: "a", shape: .primitive(.int64), required: true)]))
            let old = directory.appendingPathComponent("old.json")
            try JSONEncoder().encode(snapshot).write(to: old)
            let breaking = try await runCLI(["compat", old.path, "typed", "--codec", "json"], busDirectory: temporary.directory)
            #expect(breaking.status == 1)
            #expect(breaking.output.contains("BREAKING (old clients) math.add argument.b: field added, required"), "\(breaking.output)")

            let garbage = directory.appendingPathComponent("garbage.json")
            try Data("{}".utf8).write(to: garbage)
            let refused = try await runCLI(["compat", garbage.path, "typed"], busDirectory: temporary.directory)
            #expect(refused.status == 1)
            #expect(refused.errors.contains("is not a schema snapshot"))
        }
    }

    /// A listener that is not a bus service (or an older one) has no `intercom.describe`: the error says why.
    @Test func describingWhatCannotDescribeItselfSaysWhy() async throws {
        try await withResourceCheck {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("intercom-nodescribe-\(getpid()).sock").path
            let router = Router()
            try router.register("math.negate") { (value: Int, _: CallContext) in -value }
            let listener = try await PeerListener.listen(unixPath: path, router: router)
            let run = try await runCLI(["describe", path], busDirectory: nil)
            #expect(run.status == 1)
            #expect(run.errors.contains("does not describe itself (no intercom.describe)"), "\(run.errors)")
            await listener.close()
        }
    }
}
