/// The API's routes as path patterns (`/v1/domains/{name}`) and their methods: registered on the
/// router and consulted to tell a wrong method (405) from an unknown path (404).
struct RouteTable: Sendable {
    private var entries: [(pattern: [String], methods: [String])] = []

    mutating func add(_ method: String, _ pattern: String) {
        let parts = Self.components(pattern)
        if let index = entries.firstIndex(where: { $0.pattern == parts }) {
            entries[index].methods.append(method)
        } else {
            entries.append((parts, [method]))
        }
    }

    /// The methods allowed on a concrete path, empty when no pattern matches it.
    func methods(forPath path: String) -> [String] {
        let parts = Self.components(path)
        return entries.first { entry in
            entry.pattern.count == parts.count && zip(entry.pattern, parts).allSatisfy { $0.hasPrefix("{") || $0 == $1 }
        }?.methods ?? []
    }

    private static func components(_ path: String) -> [String] {
        path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
    }
}
