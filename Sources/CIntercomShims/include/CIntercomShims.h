// What Swift cannot call directly from the Glibc module (declarations hidden
// behind _GNU_SOURCE or in headers the module does not export). Each function is
// a thin wrapper; Intercom's Swift code calls these instead of dlsym.
#ifndef C_INTERCOM_SHIMS_H
#define C_INTERCOM_SHIMS_H

#include <stddef.h>

/// malloc_trim(3) where it exists (glibc); 0 elsewhere.
int c_intercom_malloc_trim(size_t pad);

/// accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK where it exists, so a child
/// spawned meanwhile never inherits the descriptor; accept + fcntl elsewhere.
int c_intercom_accept_cloexec_nonblock(int fd);

#endif
