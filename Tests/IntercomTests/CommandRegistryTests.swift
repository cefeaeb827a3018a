import Intercom
import IntercomTestHelper
import Testing

/// magscope's command registry and `validate_targets`: lookups by name and by
/// target, a printable table, and a check against the planned roles before
/// any process starts. Pure logic: no process, no socket.
@Suite struct CommandRegistryTests {
    let registry: CommandRegistry

    init() throws {
        self.registry = try CommandRegistry([
            CameraExposureCommand.self, SnapshotCommand.self, StatusCommand.self, UnhandledCommand.self,
        ])
    }

    @Test func lookupsByNameAndByTarget() throws {
        #expect(self.registry.entries.map(\.name) == ["camera.exposure.command", "nobody.handles", "snapshot.take", "status.report"])
        #expect(self.registry.command(named: "snapshot.take")?.delivery == .broadcast)
        #expect(self.registry.command(named: "no.such") == nil)
        #expect(self.registry.target(of: "camera.exposure.command") == "camera")
        #expect(self.registry.target(of: "status.report", coordinator: "main") == "main")
        #expect(self.registry.target(of: "snapshot.take") == nil)
        #expect(self.registry.commands(for: "camera") == ["camera.exposure.command", "nobody.handles"])
        #expect(self.registry.commands(for: "coordinator") == ["status.report"])
        let table = self.registry.table()
        #expect(table.split(separator: "\n").count == 5)
        #expect(table.contains("camera.exposure.command  service camera"))
        #expect(table.contains("snapshot.take            broadcast"))
        #expect(table.contains("status.report            coordinator (coordinator)"))
    }

    @Test func twoCommandTypesWithOneNameAreRefused() {
        #expect(throws: IntercomError.self) { try CommandRegistry([CameraExposureCommand.self, CameraExposureCommand.self]) }
    }

    @Test func thePlannedRolesAreCheckedBeforeAnythingStarts() throws {
        let camera = Router()
        try camera.handle(CameraExposureCommand.self) { command, _ in Ack(ok: true, appliedMs: command.ms) }
        let coordinator = Router()
        try coordinator.handle(StatusCommand.self) { _, _ in "ok" }
        // Missing: the camera's second command, any handler of the broadcast, a role for "main".
        let error = try #require(throws: IntercomError.self) {
            try self.registry.validate(roles: ["camera": camera, "main": coordinator], coordinator: "main")
        }
        #expect(error.code == .missingHandler)
        #expect(error.message.contains("'nobody.handles' goes to service 'camera', whose router has no handler"))
        #expect(error.message.contains("'snapshot.take' (broadcast) has no handler in any planned role"))
        #expect(!error.message.contains("status.report"))
        let withoutCoordinator = try #require(throws: IntercomError.self) {
            try self.registry.validate(roles: ["camera": camera])
        }
        #expect(withoutCoordinator.message.contains("'status.report' goes to service 'coordinator', which no planned role is"))
        // Complete: nothing to report.
        try camera.handle(UnhandledCommand.self) { _, _ in true }
        try camera.handle(SnapshotCommand.self) { _, _ in 1 }
        try self.registry.validate(roles: ["camera": camera, "main": coordinator], coordinator: "main")
    }
}
