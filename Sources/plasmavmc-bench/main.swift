// Benchmark driver for scripts/bench: QMP round trips through the Swift client, and GetVm calls
// through the gRPC client (GRPCBench.swift, for scripts/bench/grpc.sh).
//
//   plasmavmc-bench qmp SOCKET N [WARMUP]
//   plasmavmc-bench grpc-getvm SOCKET NAME[,NAME…] N CONCURRENCY [WARMUP]
//
// Connects once, runs WARMUP (default 100) untimed then N timed sequential `query-status`
// calls, closes, and prints one JSON line: {"n":…,"median_us":…,"p90_us":…,"mean_us":…,
// "min_us":…,"connect_us":…}. Add `--samples` after the arguments to include every sample (µs).
import Foundation
import PlasmaQMP

func fail(_ text: String, code: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data("plasmavmc-bench: \(text)\n".utf8))
    exit(code)
}

/// Nearest-rank percentile of sorted values.
func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
    return sorted[min(max(rank, 1), sorted.count) - 1]
}

func median(_ sorted: [Double]) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let m = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[m] : (sorted[m - 1] + sorted[m]) / 2
}

func micros(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12
}

func fmt(_ x: Double) -> String { String(format: "%.2f", x) }

var args = Array(CommandLine.arguments.dropFirst())
let wantSamples = args.contains("--samples")
args.removeAll { $0 == "--samples" }
if args.first == "grpc-getvm" {
    await runGetVm(args, wantSamples: wantSamples)
    exit(0)
}
guard args.count >= 3, args.count <= 4, args[0] == "qmp" || args[0] == "qmp-blocking" else {
    fail("usage: plasmavmc-bench qmp|qmp-blocking SOCKET N [WARMUP] [--samples]\n       plasmavmc-bench grpc-getvm SOCKET NAME[,NAME…] N CONCURRENCY [WARMUP] [--samples]")
}
/// qmp: the async QMPClient; qmp-blocking: QMPConnection on this thread.
let blocking = args[0] == "qmp-blocking"
guard let n = Int(args[2]), n > 0, n <= 10_000_000 else { fail("N must be an integer in 1...10000000") }
let warmup = args.count == 4 ? Int(args[3]) ?? -1 : 100
guard warmup >= 0 else { fail("WARMUP must be an integer >= 0") }

struct Measured {
    var samples: [Double]
    var connect: Duration
}

/// The measured loop. Nonisolated, so it runs on the global executor like every caller of the
/// client in plasmavmc (VMManager, KVMHypervisor); awaiting from the main actor instead would
/// add two executor hops per call that belong to the driver, not to the client.
func measure(path: String, n: Int, warmup: Int) async throws -> Measured {
    let clock = ContinuousClock()
    let t0 = clock.now
    let client = try await QMPClient.connect(path: path, timeout: .seconds(5))
    let connectTime = clock.now - t0
    defer { client.close() }
    for _ in 0..<warmup { _ = try await client.execute("query-status") }
    var samples: [Double] = []
    samples.reserveCapacity(n)
    for _ in 0..<n {
        let start = clock.now
        _ = try await client.execute("query-status")
        samples.append(micros(clock.now - start))
    }
    return Measured(samples: samples, connect: connectTime)
}

/// The same loop with the blocking connection, on the main thread.
func measureBlocking(path: String, n: Int, warmup: Int) throws -> Measured {
    let clock = ContinuousClock()
    let t0 = clock.now
    let conn = try QMPConnection(path: path, timeout: .seconds(5))
    let connectTime = clock.now - t0
    defer { conn.close() }
    for _ in 0..<warmup { _ = try conn.execute("query-status") }
    var samples: [Double] = []
    samples.reserveCapacity(n)
    for _ in 0..<n {
        let start = clock.now
        _ = try conn.execute("query-status")
        samples.append(micros(clock.now - start))
    }
    return Measured(samples: samples, connect: connectTime)
}

do {
    let r = blocking ? try measureBlocking(path: args[1], n: n, warmup: warmup)
                     : try await measure(path: args[1], n: n, warmup: warmup)
    let sorted = r.samples.sorted()
    let mean = r.samples.reduce(0, +) / Double(n)
    var line = "{\"n\":\(n),\"median_us\":\(fmt(median(sorted))),\"p90_us\":\(fmt(percentile(sorted, 90)))"
    line += ",\"mean_us\":\(fmt(mean)),\"min_us\":\(fmt(sorted[0])),\"connect_us\":\(fmt(micros(r.connect)))"
    if wantSamples { line += ",\"samples_us\":[" + r.samples.map(fmt).joined(separator: ",") + "]" }
    print(line + "}")
} catch {
    fail("\(error)", code: 1)
}
