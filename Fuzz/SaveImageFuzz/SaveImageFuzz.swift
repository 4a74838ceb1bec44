// libFuzzer target for the save image header and data area parsers.
//
// Compiled together with Sources/KeelSaveImage/*.swift into one module by
// scripts/fuzz-save-image.sh (not part of the SwiftPM package). Beyond "never crash", it checks
// the parser's own invariants on every input it accepts.

@_cdecl("LLVMFuzzerTestOneInput")
public func saveImageFuzzTestOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // The last byte, when present, stretches the claimed file size so the "stream offset within
    // the file" rule is exercised on both sides.
    let extra = UInt64(bytes.last ?? 0) << 12
    for options in [SaveImageReadOptions.strict, .metadata, .init(allowsUnknownCompression: true, allowsIncomplete: true)] {
        for fileSize in [UInt64(size), UInt64(size) + extra] {
            guard let info = try? SaveImageInfo(parsing: bytes, fileSize: fileSize, options: options) else {
                continue
            }
            check(info, bytes)
        }
    }
    return 0
}

private func check(_ info: SaveImageInfo, _ bytes: [UInt8]) {
    let header = info.header
    // Accepted means every rule held.
    precondition(header.dataLength > 0 && header.dataLength <= SaveImageDataArea.maximumLength)
    precondition(header.version == 1 || header.version == 2)
    precondition(header.streamOffset <= info.fileSize)
    precondition(header.effectiveCookieOffset < header.dataLength)
    // The header re-encodes to the bytes it came from.
    precondition(header.encoded() == Array(bytes[0..<SaveImageHeader.size]))
    // The strings fit their regions, so the area re-encodes into the same length and decodes back.
    guard let area = try? info.dataArea.encoded(dataLength: header.dataLength) else {
        preconditionFailure("accepted data area does not fit its own length")
    }
    var rewritten = header
    rewritten.cookieOffset = area.cookieOffset
    if header.version == 1 {
        // Version 1 has no cookie; the decoded area never holds one.
        precondition(info.dataArea.cookie == nil)
    }
    guard let again = try? SaveImageDataArea(decoding: area.bytes, header: rewritten) else {
        preconditionFailure("re-encoded data area does not decode")
    }
    precondition(again == info.dataArea)
}
