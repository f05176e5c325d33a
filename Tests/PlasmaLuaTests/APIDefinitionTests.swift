import Foundation
@testable import PlasmaLua
import Testing

/// The `vm` API is defined once (VMAPI.operations); the stubs for the Lua language server and
/// the README's table must list exactly its methods and functions.
@Suite("One definition of the vm API")
struct APIDefinitionTests {
    static let repo: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    func read(_ path: String) throws -> String {
        String(decoding: try Data(contentsOf: URL(fileURLWithPath: Self.repo + "/" + path)), as: UTF8.self)
    }

    func matches(_ pattern: String, in text: String) throws -> Set<String> {
        let regex = try NSRegularExpression(pattern: pattern, options: [.anchorsMatchLines])
        let ns = text as NSString
        return Set(regex.matches(in: text, range: NSRange(location: 0, length: ns.length)).map { ns.substring(with: $0.range(at: 1)) })
    }

    var api: [VMAPI.Operation] { VMAPI.operations.filter { $0.style != .internal } }
    func names(_ styles: VMAPI.Style...) -> Set<String> { Set(api.filter { styles.contains($0.style) }.map(\.name)) }

    @Test func theLanguageServerStubsListExactlyTheAPI() throws {
        let meta = try read("stdlib/meta/plasmavmc.lua")
        #expect(try matches(#"^function VM:(\w+)\("#, in: meta) == names(.method), "VM methods in stdlib/meta/plasmavmc.lua")
        #expect(try matches(#"^function vm\.(\w+)\("#, in: meta) == names(.method, .function), "vm functions in stdlib/meta/plasmavmc.lua")
        #expect(try matches(#"^function (\w+)\("#, in: meta) == names(.global), "globals in stdlib/meta/plasmavmc.lua")
    }

    @Test func theREADMETableListsExactlyTheAPI() throws {
        let readme = try read("README.md")
        let start = try #require(readme.range(of: "### The `vm` API"))
        let rest = readme[start.upperBound...]
        let end = rest.range(of: "\n### ")?.lowerBound ?? rest.endIndex
        let rows = rest[..<end].split(separator: "\n").filter { $0.hasPrefix("| `") }.map { row in
            String(row.dropFirst(2).prefix { $0 != "|" })
        }.joined(separator: "\n")
        var listed = try matches(#"`v:(\w+)"#, in: rows)
        listed.formUnion(try matches(#"v:(\w+)\("#, in: rows))
        listed.formUnion(try matches(#"vm\.(\w+)"#, in: rows))
        listed.formUnion(try matches(#"`(\w+)\("#, in: rows))
        #expect(listed == names(.method, .function, .global), "the README's `vm` API table")
    }

    @Test func helpComesFromTheDefinition() {
        guard case .array(let entries) = VMAPI.reference else {
            Issue.record("reference is not a list")
            return
        }
        #expect(entries.count == api.count)
        for op in api {
            #expect(!op.signature.isEmpty && !op.summary.isEmpty, "\(op.name) needs a signature and a summary for help()")
            for option in op.options {
                #expect(op.signature.contains(option.name + "="), "help for \(op.name) does not show its option \(option.name)")
            }
        }
        // Every operation the prelude calls natively has Swift behind it, and each name is unique.
        #expect(Set(VMAPI.operations.map(\.name)).count == VMAPI.operations.count)
        for op in VMAPI.operations where op.binding != .prelude {
            #expect(op.make != nil, "\(op.name) is bound as a plain method but has no native operation")
        }
    }
}
