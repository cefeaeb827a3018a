import ArgumentParser

/// The `intercom` command-line tool.
@main
struct IntercomCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "intercom",
        abstract: "Typed inter-process calls and messages for Swift.",
        subcommands: [
            Demo.self, List.self, Call.self, Describe.self, Compat.self, Monitor.self, Top.self, GetProperty.self, SetProperty.self, Watch.self, Ping.self, Echo.self, Bench.self, BenchServer.self,
            DemoWorker.self,
        ]
    )
}
