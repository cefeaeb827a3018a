internal import CIntercomShims
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Starting a program that outlives its starter (an activated service): in a
/// session of its own, stdin from /dev/null, output appended to a file or
/// dropped. See `c_intercom_spawn_session`.
package enum SessionSpawn {
    /// Starts `executable` with `arguments` (without the program name) and
    /// `environment` (`KEY=value` strings); returns its pid. The caller reaps it.
    ///
    /// - Throws: ``IntercomError/Code/serviceNotFound`` if it cannot be started (the errno's text).
    package static func start(
        _ executable: String, arguments: [String], environment: [String], output: String?
    ) throws(IntercomError) -> Int32 {
        var pid: Int32 = 0
        let result = Self.withCStrings([executable] + arguments) { argv in
            Self.withCStrings(environment) { envp in
                c_intercom_spawn_session(executable, argv, envp, output, &pid)
            }
        }
        guard result == 0 else {
            throw IntercomError(.serviceNotFound, "cannot start \(executable): \(String(cString: strerror(result)))")
        }
        return pid
    }

    /// Runs `body` with `strings` as a NULL-terminated C array.
    private static func withCStrings<Result>(
        _ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> Result
    ) -> Result {
        var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
        pointers.append(nil)
        defer { for pointer in pointers { free(pointer) } }
        return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
    }
}
