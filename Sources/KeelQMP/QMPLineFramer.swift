extension QMP {
    /// Splits the byte stream from QEMU into messages.
    ///
    /// QEMU terminates every message with `\r\n`; a bare `\n` is accepted too. Empty lines are
    /// skipped. A line longer than ``maximumLineLength`` is a protocol violation (the largest
    /// real reply, `query-qmp-schema`, is a few hundred KiB).
    public struct LineFramer: Sendable {
        public static let defaultMaximumLineLength = 16 << 20

        public let maximumLineLength: Int
        private var buffer: [UInt8] = []
        /// Where the search for the next newline resumes.
        private var scanned = 0

        public init(maximumLineLength: Int = LineFramer.defaultMaximumLineLength) {
            self.maximumLineLength = maximumLineLength
        }

        /// Bytes received but not yet part of a complete line.
        public var bufferedByteCount: Int { buffer.count }

        /// Appends `bytes` and returns every line now complete, without the terminator.
        ///
        /// - Throws: `QMP.Error.protocolViolation` when a line exceeds the maximum length.
        public mutating func append(_ bytes: some Collection<UInt8>) throws(QMP.Error) -> [[UInt8]] {
            buffer.append(contentsOf: bytes)
            var lines: [[UInt8]] = []
            var lineStart = 0
            var position = scanned
            while position < buffer.count {
                if buffer[position] == 0x0A {
                    var lineEnd = position
                    if lineEnd > lineStart, buffer[lineEnd - 1] == 0x0D { lineEnd -= 1 }
                    guard lineEnd - lineStart <= maximumLineLength else {
                        throw .protocolViolation("a message exceeds \(maximumLineLength) bytes")
                    }
                    if lineEnd > lineStart {
                        lines.append(Array(buffer[lineStart..<lineEnd]))
                    }
                    lineStart = position + 1
                }
                position += 1
            }
            if lineStart > 0 {
                buffer.removeFirst(lineStart)
            }
            scanned = buffer.count
            guard buffer.count <= maximumLineLength else {
                throw .protocolViolation("a message exceeds \(maximumLineLength) bytes")
            }
            return lines
        }
    }
}
