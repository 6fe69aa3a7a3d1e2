// Whether the client of an HTTP request is still connected, for handlers that answer with one
// whole body after a long wait (a non-streamed completion). cpp-httplib 0.11 gives a handler
// neither its socket nor a connection-closed check (a stream learns of a disconnect when a write
// fails; a whole body is written only at the end). A handler does know its connection's local
// and remote address and port, and that 4-tuple names exactly one socket among the process's
// open descriptors: find it once, then peek at it (without reading or blocking) to see whether
// the peer has closed or reset the connection.
#pragma once

#include <string>

namespace llamaq::serve {

// The two ends of a TCP connection, as httplib::Request reports them (numeric addresses).
struct ConnectionEnds {
  std::string local_addr;
  int local_port = -1;
  std::string remote_addr;
  int remote_port = -1;
};

// The open socket of this process connected from `ends.local_*` to `ends.remote_*` (IPv4 or
// IPv6, as getnameinfo writes the addresses), or -1 when there is none.
int find_connection_socket(const ConnectionEnds& ends);

// True once the peer of a connected socket has closed its end (FIN) or reset the connection.
// Data the peer has sent but the server has not read (a pipelined request) is left in place.
bool peer_has_closed(int fd);

// The connection of one request, found when constructed. closed() is false while the client is
// there, and always when its socket was not found (no check is better than a wrong one). The
// descriptor belongs to the HTTP server, which keeps it open while the handler runs.
class ClientConnection {
 public:
  explicit ClientConnection(const ConnectionEnds& ends) : fd_(find_connection_socket(ends)) {}
  bool found() const { return fd_ >= 0; }
  bool closed() const { return found() && peer_has_closed(fd_); }

 private:
  int fd_;
};

}  // namespace llamaq::serve
