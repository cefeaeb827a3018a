// Shows a ThreadSanitizer false positive that also appears in Intercom's suite:
//   swiftc -sanitize=thread -g Scripts/tsan/refcount-handoff.swift -o /tmp/handoff && /tmp/handoff
// reports a data race on every run, although the program is correct.
//
// One thread reads an object's memory and then drops its reference; the other
// waits until its own reference is the only one (`isKnownUniquelyReferenced`,
// what copy-on-write types such as NIO's ByteBuffer check before growing their
// storage in place) and then writes. The reference count, an atomic in the
// uninstrumented Swift runtime, is what orders the two, and ThreadSanitizer
// cannot see it. In Intercom the same shape is the shared-memory thread growing
// its inbound cumulation in place after a caller's task read a reply payload
// (a slice of that storage) and released it.
import Foundation

final class Storage {
    var bytes: UnsafeMutableRawPointer
    let count: Int
    init(count: Int) {
        self.count = count
        self.bytes = malloc(count)!
        memset(self.bytes, 1, count)
    }
    deinit { free(self.bytes) }
}

final class Box: @unchecked Sendable { var storage: Storage? }
let handoff = NSLock()
let box = Box()
var mine = Storage(count: 4096)
handoff.lock()
box.storage = mine  // writer → reader: ordered by the lock, which the sanitizer sees
handoff.unlock()

let reader = Thread {
    var taken: Storage?
    while taken == nil {
        handoff.lock()
        taken = box.storage
        box.storage = nil
        handoff.unlock()
    }
    var sum = 0
    for index in 0..<taken!.count { sum &+= Int(taken!.bytes.load(fromByteOffset: index, as: UInt8.self)) }
    print("read", sum)
    taken = nil  // reader → writer: only the reference count says "done"
}
reader.start()
while !isKnownUniquelyReferenced(&mine) {}
mine.bytes = realloc(mine.bytes, 1 << 20)!  // what a unique copy-on-write buffer does to grow
memset(mine.bytes, 2, 4096)
print("wrote")
