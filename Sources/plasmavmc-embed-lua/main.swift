// Build tool of the EmbedLua plugin: turns Lua files into a Swift source of string literals,
// so the prelude is compiled into the binary (an installed plasmavmc needs no source tree)
// while stdlib/ stays the single source of its text.
//
// Usage: plasmavmc-embed-lua OUTPUT.swift NAME=FILE.lua...
import Foundation

let args = CommandLine.arguments.dropFirst()
guard let output = args.first else {
    FileHandle.standardError.write(Data("usage: plasmavmc-embed-lua OUTPUT.swift NAME=FILE.lua...\n".utf8))
    exit(2)
}
var swift = """
    // Generated at build time by plasmavmc-embed-lua from stdlib/; do not edit.

    /// The Lua text of stdlib/ files compiled into the binary.
    enum EmbeddedLua {

    """
for pair in args.dropFirst() {
    guard let eq = pair.firstIndex(of: "="), let data = FileManager.default.contents(atPath: String(pair[pair.index(after: eq)...])) else {
        FileHandle.standardError.write(Data("plasmavmc-embed-lua: cannot read \(pair)\n".utf8))
        exit(1)
    }
    let name = String(pair[..<eq])
    let text = String(decoding: data, as: UTF8.self)
    // Enough #s that neither the closing delimiter nor an escape occurs in the text.
    var hashes = "#"
    while text.contains("\"\"\"" + hashes) || text.contains("\\" + hashes) || text.contains("\"" + hashes) { hashes += "#" }
    swift += "    /// \(pair[pair.index(after: eq)...].split(separator: "/").suffix(3).joined(separator: "/"))\n"
    swift += "    static let \(name) = \(hashes)\"\"\"\n\(text)\(text.hasSuffix("\n") ? "" : "\n")\"\"\"\(hashes)\n\n"
}
swift += "}\n"
do {
    try Data(swift.utf8).write(to: URL(fileURLWithPath: output), options: .atomic)
} catch {
    FileHandle.standardError.write(Data("plasmavmc-embed-lua: cannot write \(output): \(error)\n".utf8))
    exit(1)
}
