import Foundation
@testable import KeelDaemon
import Testing

/// The committed API description is what keeld serves, and it describes every route.
@Suite("keeld: the OpenAPI document")
struct OpenAPIDocumentTests {
    static let committed = Keeld.repository.appendingPathComponent("docs/api/openapi.json")

    @Test("GET /openapi.json serves docs/api/openapi.json byte for byte")
    func servedEqualsCommitted() async throws {
        let file = try Data(contentsOf: Self.committed)
        try await Keeld.with { keeld in
            let served = try keeld.get("/openapi.json")
            #expect(served.status == 200)
            #expect(served.headers["content-type"] == "application/json")
            #expect(served.body == file, "regenerate with docs/api/generate-swift.sh")
        }
    }

    @Test("the document is OpenAPI 3.0, describes every route the daemon registers, and the error schema")
    func describesEveryRoute() throws {
        let object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: Self.committed)) as? [String: Any])
        #expect((object["openapi"] as? String)?.hasPrefix("3.0") == true)
        let paths = try #require(object["paths"] as? [String: [String: Any]])
        var documented = Set<String>()
        for (path, item) in paths {
            for method in item.keys where ["get", "post", "put", "delete", "patch"].contains(method) {
                documented.insert("\(method.uppercased()) \(path)")
            }
        }
        let registered = Set(API.allEndpoints.map { "\($0.method.rawValue) \($0.path)" })
        #expect(documented == registered)
        let schemas = try #require((object["components"] as? [String: Any])?["schemas"] as? [String: Any])
        #expect(schemas["Error"] != nil)
        #expect(schemas["CPUFeature"] != nil)
    }
}
