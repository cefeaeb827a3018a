// `import Intercom` gives users every layer; each lives in a module of its own so
// the compiler checks that none reaches up (docs/ARCHITECTURE.md).
@_exported public import IntercomActors
@_exported public import IntercomBus
@_exported public import IntercomCore
@_exported public import IntercomProcesses
@_exported public import IntercomTransport
// From the wire module, what users write themselves: a codec of their own and
// the input limits it is given. (The rest of the wire is not API.)
@_exported public import protocol IntercomWire.CustomPayloadCodec
@_exported public import struct IntercomWire.WireLimits
@_exported public import struct IntercomWire.CodecID
@_exported public import struct IntercomWire.WireSchemas
@_exported public import protocol IntercomWire.WireSchemaDescribable
@_exported public import enum IntercomWire.WireShape
@_exported public import struct IntercomWire.WireField
@_exported public import struct IntercomWire.TypeSchema
@_exported public import struct IntercomWire.MethodSchema
@_exported public import struct IntercomWire.ServiceSchema
@_exported public import enum IntercomWire.SchemaCompatibility
@_exported public import struct IntercomWire.CompatibilityReport
@_exported public import struct IntercomWire.SchemaChange
@_exported public import struct IntercomWire.BinaryPayloadRenderer
