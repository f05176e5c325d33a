import Foundation
import PackagePlugin

/// Compiles the Lua prelude files of stdlib/plasma into the target as Swift string literals
/// (`EmbeddedLua.vm`, `EmbeddedLua.repl`), rebuilt whenever one of them changes.
@main
struct EmbedLua: BuildToolPlugin {
    static let files = ["vm": "stdlib/plasma/vm.lua", "repl": "stdlib/plasma/repl.lua"]

    func createBuildCommands(context: PluginContext, target: any Target) throws -> [Command] {
        let root = context.package.directoryURL
        let inputs = Self.files.sorted { $0.key < $1.key }.map { ($0.key, root.appending(path: $0.value)) }
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedLua.swift")
        return [
            .buildCommand(
                displayName: "Embedding the Lua prelude (stdlib/plasma)",
                executable: try context.tool(named: "plasmavmc-embed-lua").url,
                arguments: [output.path] + inputs.map { "\($0.0)=\($0.1.path)" },
                inputFiles: inputs.map(\.1),
                outputFiles: [output]),
        ]
    }
}
