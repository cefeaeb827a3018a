import Intercom
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Writing and reading the standard streams with the system calls themselves:
// the tool links FoundationEssentials only (no FileHandle, no String(format:)),
// and each line goes out whole and at once, also into a pipe.

/// Writes `text` and a newline to standard output, unbuffered.
func printLine(_ text: String) {
    writeAll(text + "\n", to: STDOUT_FILENO)
}

/// Writes `text` and a newline to standard error, unbuffered.
func progress(_ text: String) {
    writeAll(text + "\n", to: STDERR_FILENO)
}

private func writeAll(_ text: String, to fd: Int32) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += written
        }
    }
}

/// Everything on standard input until its end, or nil if reading fails.
func readStandardInput() -> [UInt8]? {
    POSIX.readAll(STDIN_FILENO, limit: .max)
}

/// `text` padded with spaces on the left to `width` characters (`%5d`).
func right(_ text: some CustomStringConvertible, _ width: Int) -> String {
    let text = text.description
    return String(repeating: " ", count: max(0, width - text.count)) + text
}

/// `text` padded with spaces on the right to `width` characters (`%-5s`).
func left(_ text: some CustomStringConvertible, _ width: Int) -> String {
    let text = text.description
    return text + String(repeating: " ", count: max(0, width - text.count))
}

/// `value` with exactly `decimals` digits after the point, rounded half away
/// from zero (what `%.Nf` printed): `fixed(12.345, 1)` is "12.3".
func fixed(_ value: Double, _ decimals: Int) -> String {
    guard value.isFinite else { return "\(value)" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let scaled = (abs(value) * scale).rounded()
    guard scaled < 9e15 else { return "\(value)" }
    let units = Int(scaled)
    let divisor = Int(scale)
    let sign = value < 0 && units != 0 ? "-" : ""
    guard decimals > 0 else { return sign + "\(units)" }
    let fraction = String(units % divisor)
    return sign + "\(units / divisor)." + String(repeating: "0", count: decimals - fraction.count) + fraction
}

/// `text` as a JSON string literal, quotes and escapes included.
func jsonString(_ text: String) -> String {
    String(decoding: (try? JSONEncoder().encode(text)) ?? Data("\"\"".utf8), as: UTF8.self)
}

/// A duration in microseconds as people read it: `85 µs`, `1.3 ms`, `2.05 s`.
func formatMicroseconds(_ microseconds: Int64) -> String {
    if microseconds < 1000 { return "\(microseconds) µs" }
    if microseconds < 1_000_000 { return "\(fixed(Double(microseconds) / 1000, 1)) ms" }
    return "\(fixed(Double(microseconds) / 1e6, 2)) s"
}
