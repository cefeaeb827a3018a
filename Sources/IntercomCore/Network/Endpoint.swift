public import IntercomTransport

/// Where a peer listens or connects: a Unix socket path on this host, or a host
/// and port over TCP or TLS.
///
/// Written as a URL-like string wherever Intercom takes an address (the command
/// line too): `tls://camera.lab:7411`, `tcp://127.0.0.1:7411`, `unix:///run/x.sock`
/// (or a bare absolute path). IPv6 hosts go in brackets: `tls://[::1]:7411`.
///
/// ```swift
/// let peer = try await Peer.connect(to: Endpoint("tls://camera.lab:7411")!, configuration: configuration)
/// ```
public struct Endpoint: Sendable, Hashable, CustomStringConvertible, LosslessStringConvertible {
    /// What carries the connection. (A struct, not an enum: more may come.)
    public struct Scheme: Sendable, Hashable, CustomStringConvertible {
        /// The scheme's name as written in an address: `unix`, `tcp`, `tls`.
        public let name: String
        private init(_ name: String) { self.name = name }

        /// A Unix stream socket on this host (credentials from the kernel).
        public static let unix = Scheme("unix")
        /// Plain TCP: neither encrypted nor authenticated (refused unless
        /// ``Peer/Configuration/allowsPlainTCP`` is set).
        public static let tcp = Scheme("tcp")
        /// TCP with TLS 1.3 and mutual authentication by certificates.
        public static let tls = Scheme("tls")

        /// The name.
        public var description: String { self.name }
    }

    /// What carries the connection.
    public let scheme: Scheme
    /// The host name or IP address (network endpoints); empty for Unix sockets.
    public let host: String
    /// The port (network endpoints); 0 for Unix sockets, and when listening means "any free port".
    public let port: Int
    /// The socket path (Unix endpoints); empty otherwise.
    public let path: String

    private init(scheme: Scheme, host: String, port: Int, path: String) {
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path
    }

    /// A Unix socket at `path`.
    public static func unix(path: String) -> Endpoint {
        Endpoint(scheme: .unix, host: "", port: 0, path: path)
    }

    /// Plain TCP to `host` on `port` (0 when listening: any free port).
    public static func tcp(host: String, port: Int) -> Endpoint {
        Endpoint(scheme: .tcp, host: host, port: port, path: "")
    }

    /// TLS over TCP to `host` on `port` (0 when listening: any free port).
    public static func tls(host: String, port: Int) -> Endpoint {
        Endpoint(scheme: .tls, host: host, port: port, path: "")
    }

    /// Whether the endpoint is reached over a network (TCP or TLS).
    public var isNetwork: Bool { self.scheme != .unix }

    /// Parses `tls://HOST:PORT`, `tcp://HOST:PORT`, `unix://PATH` or an absolute
    /// path; nil for anything else (a bare service name, a missing port, a port
    /// out of range).
    public init?(_ description: String) {
        if description.hasPrefix("/") {
            self = .unix(path: description)
            return
        }
        let parts = description.split(separator: "://", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else { return nil }
        let scheme = parts[0].lowercased()
        let rest = String(parts[1])
        switch scheme {
        case "unix":
            guard rest.hasPrefix("/") else { return nil }
            self = .unix(path: rest)
        case "tcp", "tls":
            guard let (host, port) = Self.hostAndPort(rest) else { return nil }
            self = scheme == "tls" ? .tls(host: host, port: port) : .tcp(host: host, port: port)
        default:
            return nil
        }
    }

    /// Parses an address, or says what is wrong with it.
    ///
    /// - Throws: ``IntercomError`` `invalidName`, naming the accepted forms.
    public init(parsing description: String) throws(IntercomError) {
        guard let endpoint = Endpoint(description) else {
            throw IntercomError(
                .invalidName,
                "'\(description)' is not an address: write tls://HOST:PORT, tcp://HOST:PORT, unix:///PATH or an absolute path")
        }
        self = endpoint
    }

    /// `HOST:PORT` or `[IPv6]:PORT`, port 0…65535, nothing after it.
    private static func hostAndPort(_ text: String) -> (String, Int)? {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            guard after.hasPrefix(":") else { return nil }
            portText = after.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { return nil }  // an IPv6 address needs brackets
        }
        guard !host.isEmpty, !host.contains("/"), let port = Int(portText), (0...65535).contains(port) else { return nil }
        return (String(host), port)
    }

    /// The address as it is written: `tls://host:7411`, `unix:///path`.
    public var description: String {
        switch self.scheme {
        case .unix: return "unix://\(self.path)"
        default:
            let host = self.host.contains(":") ? "[\(self.host)]" : self.host
            return "\(self.scheme.name)://\(host):\(self.port)"
        }
    }
}
