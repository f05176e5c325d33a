import GRPCCore
import GRPCNIOTransportHTTP2
import PlasmaRPC

/// `plasmavmc-bench grpc-getvm SOCKET NAME N CONCURRENCY [WARMUP]`: GetVm calls through the
/// grpc-swift-2 client over one HTTP/2 connection to a `plasmavmc serve` unix socket, from
/// CONCURRENCY callers at once (each a task doing its share of N calls back to back). NAME may
/// be a comma-separated list: caller i asks for name i modulo the list. An empty NAME measures
/// the RPC floor: the server refuses the empty name (INVALID_ARGUMENT) before touching any VM.
struct GetVmResult: Sendable {
    var samples: [Double]
    var wall: Duration
}

func measureGetVm(path: String, names: [String], n: Int, concurrency: Int, warmup: Int) async throws -> GetVmResult {
    let transport = try HTTP2ClientTransport.Posix(target: .unixDomainSocket(path: path), transportSecurity: .plaintext)
    return try await withGRPCClient(transport: transport) { client in
        let stub = Plasmavmc_V1_VmService.Client(wrapping: client)
        let options: CallOptions = {
            var o = CallOptions.defaults
            o.timeout = .seconds(60)
            return o
        }()
        let floor = names == [""]
        @Sendable func call(_ name: String) async throws {
            var ref = Plasmavmc_V1_VmRef()
            ref.name = name
            do {
                _ = try await stub.getVm(ref, options: options)
            } catch let e as RPCError where floor && e.code == .invalidArgument {
                return
            }
        }
        for i in 0..<warmup { try await call(names[i % names.count]) }
        let clock = ContinuousClock()
        let t0 = clock.now
        let samples = try await withThrowingTaskGroup(of: [Double].self) { group in
            for c in 0..<concurrency {
                let count = n / concurrency + (c < n % concurrency ? 1 : 0)
                let name = names[c % names.count]
                group.addTask {
                    var s: [Double] = []
                    s.reserveCapacity(count)
                    for _ in 0..<count {
                        let start = clock.now
                        try await call(name)
                        s.append(micros(clock.now - start))
                    }
                    return s
                }
            }
            var all: [Double] = []
            for try await s in group { all += s }
            return all
        }
        return GetVmResult(samples: samples, wall: clock.now - t0)
    }
}

func runGetVm(_ args: [String], wantSamples: Bool) async {
    guard args.count >= 5, args.count <= 6 else {
        fail("usage: plasmavmc-bench grpc-getvm SOCKET NAME[,NAME…] N CONCURRENCY [WARMUP] [--samples]")
    }
    guard let n = Int(args[3]), n > 0, n <= 10_000_000 else { fail("N must be an integer in 1...10000000") }
    guard let concurrency = Int(args[4]), concurrency > 0, concurrency <= 1024 else {
        fail("CONCURRENCY must be an integer in 1...1024")
    }
    let warmup = args.count == 6 ? Int(args[5]) ?? -1 : 100
    guard warmup >= 0 else { fail("WARMUP must be an integer >= 0") }
    let names = args[2].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
    do {
        let r = try await measureGetVm(path: args[1], names: names, n: n, concurrency: concurrency, warmup: warmup)
        let sorted = r.samples.sorted()
        let wall = micros(r.wall) / 1e6
        var line = "{\"n\":\(n),\"concurrency\":\(concurrency),\"median_us\":\(fmt(median(sorted)))"
        line += ",\"p99_us\":\(fmt(percentile(sorted, 99))),\"mean_us\":\(fmt(r.samples.reduce(0, +) / Double(n)))"
        line += ",\"min_us\":\(fmt(sorted[0])),\"max_us\":\(fmt(sorted[sorted.count - 1]))"
        line += ",\"wall_s\":\(String(format: "%.4f", wall)),\"rps\":\(fmt(Double(n) / wall))"
        if wantSamples { line += ",\"samples_us\":[" + r.samples.map(fmt).joined(separator: ",") + "]" }
        print(line + "}")
    } catch {
        fail("\(error)", code: 1)
    }
}
