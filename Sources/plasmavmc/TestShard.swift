import PlasmaVMM

/// One of N disjoint subsets of a test run's files (`plasmavmc test --shard K/N`), the
/// interface of jest, Playwright and pytest-split, for CI systems that fan out over machines.
///
/// The files are split in the order the run lists them (paths as given, a folder's files
/// sorted) into N consecutive slices whose sizes differ by at most one, the larger ones first.
/// The same files give the same slices on every machine and every run; together the N shards
/// run every file once.
struct TestShard: Equatable {
    /// 1-based: 1 ≤ index ≤ count.
    let index: Int
    let count: Int

    /// The whole run as one shard.
    static let whole = TestShard(index: 1, count: 1)

    private init(index: Int, count: Int) {
        self.index = index
        self.count = count
    }

    /// Parses "K/N" with 1 ≤ K ≤ N: plain decimal digits only (no sign, space or exponent),
    /// checked before any conversion so that no input can overflow.
    /// - Throws: `PlasmaError.invalidArgument` naming the input and the expected form.
    init(parsing text: String) throws {
        func bad() -> PlasmaError {
            PlasmaError(.invalidArgument,
                        "--shard must be K/N with 1 <= K <= N <= \(Self.maxCount) (e.g. --shard 2/3 runs the second of 3 parts), got \"\(text)\"")
        }
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { throw bad() }
        func number(_ s: Substring) -> Int? {
            guard (1...9).contains(s.utf8.count), s.utf8.allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
            return Int(s)
        }
        guard let k = number(parts[0]), let n = number(parts[1]), n >= 1, n <= Self.maxCount, k >= 1, k <= n else {
            throw bad()
        }
        self.init(index: k, count: n)
    }

    /// More shards than any CI fans out to; also keeps every number small.
    static let maxCount = 100_000

    /// This shard's files out of `files`, in their order.
    func select<T>(_ files: [T]) -> [T] {
        let base = files.count / count, extra = files.count % count
        let i = index - 1
        let start = i * base + min(i, extra)
        let size = base + (i < extra ? 1 : 0)
        return Array(files[start..<(start + size)])
    }

    var description: String { "\(index)/\(count)" }
}
