// Finding a connection's socket by its addresses (/proc/self/fd, getsockname, getpeername) and
// peeking at it (poll, recv with MSG_PEEK) to see whether the peer is still there.
#include "serve/client_connection.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <memory>

namespace llamaq::serve {
namespace {

// One end of a socket as httplib writes it: numeric host (getnameinfo) and port.
struct Endpoint {
  std::string addr;
  int port = -1;
};

using AddressOf = int (*)(int, sockaddr*, socklen_t*);

// The local (getsockname) or peer (getpeername) end of an IPv4 or IPv6 socket, or port -1.
Endpoint endpoint_of(int fd, AddressOf address_of) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (address_of(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return {};
  int port = -1;
  if (addr.ss_family == AF_INET) {
    port = ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    port = ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
  } else {
    return {};
  }
  std::array<char, NI_MAXHOST> host{};
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host.data(),
                  socklen_t(host.size()), nullptr, 0, NI_NUMERICHOST) != 0) {
    return {};
  }
  return {host.data(), port};
}

bool is_socket(int fd) {
  struct stat st {};
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

// Ports first: they rule out almost every other socket without a name lookup.
bool connects(int fd, const ConnectionEnds& ends) {
  if (!is_socket(fd)) return false;
  const Endpoint local = endpoint_of(fd, getsockname);
  if (local.port != ends.local_port) return false;
  const Endpoint remote = endpoint_of(fd, getpeername);
  return remote.port == ends.remote_port && local.addr == ends.local_addr &&
         remote.addr == ends.remote_addr;
}

// The descriptor number a /proc/self/fd entry names, or -1 ("." and "..").
int descriptor_number(const char* name) {
  int fd = -1;
  const char* end = name + std::strlen(name);
  const auto [ptr, ec] = std::from_chars(name, end, fd);
  return ec == std::errc() && ptr == end ? fd : -1;
}

}  // namespace

int find_connection_socket(const ConnectionEnds& ends) {
  if (ends.local_port < 0 || ends.remote_port < 0) return -1;
  const std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir("/proc/self/fd"), closedir);
  if (!dir) return -1;
  while (const dirent* entry = readdir(dir.get())) {
    const int fd = descriptor_number(entry->d_name);
    if (fd >= 0 && connects(fd, ends)) return fd;
  }
  return -1;
}

bool peer_has_closed(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) < 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  if (!(p.revents & POLLIN)) return false;
  // Readable: either data (a pipelined request: still connected) or the end of the stream.
  char byte = 0;
  const ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return false;
  if (n == 0) return true;
  return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

}  // namespace llamaq::serve
