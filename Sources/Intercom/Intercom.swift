// `import Intercom` gives users every layer; each lives in a module of its own so
// the compiler checks that none reaches up (docs/ARCHITECTURE.md).
@_exported public import IntercomActors
@_exported public import IntercomBus
@_exported public import IntercomCore
@_exported public import IntercomProcesses
@_exported public import IntercomTransport
