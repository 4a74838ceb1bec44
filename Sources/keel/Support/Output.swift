import Glibc

/// A failed command: its one-line message goes to stderr and the process exits with `exitCode`.
struct CommandFailure: Error {
    var message: String
    var exitCode: Int32 = 1
}

enum Output {
    /// Writes `text` to stdout as is.
    static func print(_ text: String) {
        writeAll(1, text)
    }

    /// Writes `warning: message` to stderr as one line.
    static func warning(_ message: String) {
        writeAll(2, "warning: " + message.replacingNewlines() + "\n")
    }

    /// Writes `error: message` to stderr as one line.
    static func error(_ message: String) {
        let line = "error: " + message.replacingNewlines() + "\n"
        writeAll(2, line)
    }
}

/// Writes all of `text` to `fd`, retrying short writes.
func writeAll(_ fd: Int32, _ text: String) {
    var text = text
    text.withUTF8 { buffer in
        var offset = 0
        while offset < buffer.count {
            let written = write(fd, buffer.baseAddress.map { $0 + offset }, buffer.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += written
        }
    }
}

extension String {
    func replacingNewlines() -> String {
        String(map { $0 == "\n" ? " " : $0 })
    }
}
