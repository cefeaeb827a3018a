import Foundation
import Testing

/// The guides in docs/coming-from cannot rot: every Swift block in them must
/// appear, line for line (indentation aside), in the sources of the tests or
/// the test helper — code that `swift test` compiles and runs.
@Suite struct GuideSnippetTests {
    private static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func everySwiftBlockOfEveryGuideIsCodeThatRuns() throws {
        let guides = URL(fileURLWithPath: "docs/coming-from", relativeTo: Self.root)
        let names = try FileManager.default.contentsOfDirectory(atPath: guides.path).filter { $0.hasSuffix(".md") && $0 != "README.md" }
        #expect(
            Set(names) == ["ductworks.md", "boss-multiprocess.md", "epyrpc.md", "magscope.md", "ipc-manager.md", "multiprocessing.md"])
        let sources = try Self.sourceFiles().map { try Self.normalized(String(contentsOf: $0, encoding: .utf8)) }
        for name in names {
            let text = try String(contentsOf: guides.appendingPathComponent(name), encoding: .utf8)
            let blocks = Self.swiftBlocks(in: text)
            #expect(!blocks.isEmpty, "\(name) shows no Swift")
            for block in blocks {
                let lines = Self.normalized(block)
                #expect(
                    sources.contains { Self.contains($0, lines) },
                    "\(name): this block is not in any test or helper source (run docs/coming-from/make_guides.py?):\n\(block)")
            }
        }
    }

    private static func sourceFiles() throws -> [URL] {
        var files: [URL] = []
        for folder in ["Tests", "Sources/IntercomTestHelper"] {
            let base = URL(fileURLWithPath: folder, relativeTo: Self.root)
            let enumerator = FileManager.default.enumerator(at: base, includingPropertiesForKeys: nil)
            while let url = enumerator?.nextObject() as? URL {
                if url.pathExtension == "swift" { files.append(url) }
            }
        }
        return files
    }

    private static func swiftBlocks(in markdown: String) -> [String] {
        var blocks: [String] = []
        var current: [Substring]?
        for line in markdown.split(separator: "\n", omittingEmptySubsequences: false) {
            if current == nil, line.trimmingCharacters(in: .whitespaces) == "```swift" {
                current = []
            } else if current != nil, line.trimmingCharacters(in: .whitespaces) == "```" {
                blocks.append(current!.joined(separator: "\n"))
                current = nil
            } else {
                current?.append(line)
            }
        }
        return blocks
    }

    private static func normalized(_ text: String) -> [String] {
        text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    private static func contains(_ haystack: [String], _ needle: [String]) -> Bool {
        guard !needle.isEmpty, needle.count <= haystack.count else { return needle.isEmpty }
        return (0...(haystack.count - needle.count)).contains { start in haystack[start..<(start + needle.count)].elementsEqual(needle) }
    }
}
