import Foundation

/// The console log as the supervisor writes it: `console.log` and the one before it,
/// `console.log.1`, each at most `cap` bytes; `console.gen` holds "GENERATION CAP". Every
/// rotated file holds exactly `cap` bytes, so byte `offset` of the whole output is in
/// generation `offset / cap` at position `offset % cap`, with no question to the supervisor.
struct ConsoleLogFiles {
    let paths: RuntimePaths

    /// The generation of `console.log` and the cap, or (0, nil) before any rotation record.
    private func generation() -> (gen: Int, cap: Int?) {
        guard let text = try? String(contentsOfFile: paths.consoleGeneration, encoding: .utf8) else { return (0, nil) }
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Int($0) }
        guard parts.count == 2, parts[0] >= 0, parts[1] > 0 else { return (0, nil) }
        return (parts[0], parts[1])
    }

    private func size(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : 0
    }

    private func readFile(_ path: String, from: Int, limit: Int) -> Data {
        guard let h = FileHandle(forReadingAtPath: path) else { return Data() }
        defer { try? h.close() }
        do {
            try h.seek(toOffset: UInt64(max(0, from)))
            return try h.read(upToCount: limit) ?? Data()
        } catch {
            return Data()
        }
    }

    /// Output from `offset` on (at most `limit` bytes) and the offset to read from next.
    /// Output older than the previous file is gone: reading resumes at the oldest kept byte.
    func read(from offset: Int, limit: Int) -> (Data, next: Int) {
        for _ in 0..<3 {
            let before = generation()
            let result = readOnce(from: offset, limit: limit, before)
            if generation() == before { return result }  // no rotation while we read
        }
        return readOnce(from: offset, limit: limit, generation())
    }

    private func readOnce(from offset: Int, limit: Int, _ g: (gen: Int, cap: Int?)) -> (Data, next: Int) {
        let cap = g.cap ?? Int.max
        let base = g.cap == nil ? 0 : g.gen.multipliedReportingOverflow(by: cap).partialValue
        let currentSize = size(paths.consoleLog)
        if offset >= base {
            var from = offset - base
            if from > currentSize { from = 0 }  // the log was replaced: start over
            let data = readFile(paths.consoleLog, from: from, limit: limit)
            return (data, base + from + data.count)
        }
        guard g.gen > 0, let c = g.cap else { return (Data(), base) }
        let previousBase = base - c
        let from = max(offset, previousBase) - previousBase
        let data = readFile(paths.consoleLog + ".1", from: from, limit: limit)
        return (data, previousBase + from + data.count)
    }

    /// The last `maxBytes` of the output (all that is kept when nil), as text.
    func tail(maxBytes: Int?) -> String {
        let g = generation()
        let current = size(paths.consoleLog)
        let previous = g.gen > 0 ? size(paths.consoleLog + ".1") : 0
        let want = min(maxBytes ?? Int.max, current + previous)
        var data = Data()
        if want > current, previous > 0 {
            let fromPrevious = want - current
            data.append(readFile(paths.consoleLog + ".1", from: previous - fromPrevious, limit: fromPrevious))
        }
        data.append(readFile(paths.consoleLog, from: max(0, current - want), limit: min(want, current)))
        return String(decoding: data, as: UTF8.self)
    }
}
