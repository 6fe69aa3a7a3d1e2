// Finding a connection's socket by its addresses and ports, and telling whether its peer is still
// there, on real loopback TCP connections (IPv4, and IPv6 where the machine has it).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

#include "serve/client_connection.h"

namespace llamaq::serve {
namespace {

// A connected loopback TCP pair: `server` is the accepted end, `client` the connecting one.
class LoopbackPair {
 public:
  explicit LoopbackPair(int family) : family_(family) {
    const int listener = socket(family, SOCK_STREAM, 0);
    if (listener < 0) return;
    sockaddr_storage addr = loopback(0);
    socklen_t len = sizeof addr;
    if (bind(listener, reinterpret_cast<sockaddr*>(&addr), address_size()) == 0 &&
        listen(listener, 1) == 0 &&
        getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      client = socket(family, SOCK_STREAM, 0);
      if (connect(client, reinterpret_cast<sockaddr*>(&addr), address_size()) == 0)
        server = accept(listener, nullptr, nullptr);
    }
    close(listener);
  }
  ~LoopbackPair() {
    close_end(client);
    close_end(server);
  }
  bool ok() const { return server >= 0 && client >= 0; }

  // The connection as the server's request handler sees it.
  ConnectionEnds server_view() const {
    const std::string host = family_ == AF_INET ? "127.0.0.1" : "::1";
    return {host, port_of(server, getsockname), host, port_of(server, getpeername)};
  }

  static void close_end(int& fd) {
    if (fd >= 0) close(fd);
    fd = -1;
  }

  int server = -1;
  int client = -1;

 private:
  sockaddr_storage loopback(int port) const {
    sockaddr_storage s{};
    if (family_ == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&s);
      a->sin_family = AF_INET;
      a->sin_port = htons(uint16_t(port));
      a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else {
      auto* a = reinterpret_cast<sockaddr_in6*>(&s);
      a->sin6_family = AF_INET6;
      a->sin6_port = htons(uint16_t(port));
      a->sin6_addr = in6addr_loopback;
    }
    return s;
  }
  socklen_t address_size() const {
    return family_ == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  }
  static int port_of(int fd, int (*address_of)(int, sockaddr*, socklen_t*)) {
    sockaddr_storage s{};
    socklen_t len = sizeof s;
    address_of(fd, reinterpret_cast<sockaddr*>(&s), &len);
    return ntohs(s.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&s)->sin_port
                                        : reinterpret_cast<sockaddr_in6*>(&s)->sin6_port);
  }

  int family_;
};

// The kernel delivers a loopback FIN or RST at once, but give it a moment on a loaded machine.
bool closes_soon(const ClientConnection& connection) {
  for (int i = 0; i < 100; ++i) {
    if (connection.closed()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

void finds_the_server_end(int family) {
  LoopbackPair pair(family);
  if (!pair.ok()) GTEST_SKIP() << "no loopback for this address family";
  const ConnectionEnds ends = pair.server_view();
  EXPECT_EQ(find_connection_socket(ends), pair.server);
  // The client's end has the same addresses with the ports swapped.
  EXPECT_EQ(find_connection_socket(
                {ends.remote_addr, ends.remote_port, ends.local_addr, ends.local_port}),
            pair.client);
  ConnectionEnds other = ends;
  other.remote_port = ends.remote_port == 1 ? 2 : 1;
  EXPECT_EQ(find_connection_socket(other), -1);
  other = ends;
  other.remote_addr = family == AF_INET ? "127.0.0.2" : "::2";
  EXPECT_EQ(find_connection_socket(other), -1);
  EXPECT_EQ(find_connection_socket({}), -1);
}

TEST(ClientConnection, FindsTheSocketOfAnIpv4Connection) {
  finds_the_server_end(AF_INET);
}

TEST(ClientConnection, FindsTheSocketOfAnIpv6Connection) {
  finds_the_server_end(AF_INET6);
}

TEST(ClientConnection, SeesTheClientCloseItsEnd) {
  LoopbackPair pair(AF_INET);
  ASSERT_TRUE(pair.ok());
  const ClientConnection connection(pair.server_view());
  ASSERT_TRUE(connection.found());
  EXPECT_FALSE(connection.closed());
  // A pipelined request waiting to be read is a live client, and stays unread.
  ASSERT_EQ(send(pair.client, "GET", 3, 0), 3);
  EXPECT_FALSE(connection.closed());
  EXPECT_FALSE(connection.closed());
  LoopbackPair::close_end(pair.client);
  EXPECT_TRUE(closes_soon(connection));
  char buf[8] = {};
  EXPECT_EQ(recv(pair.server, buf, sizeof buf, 0), 3);
  EXPECT_EQ(std::string(buf, 3), "GET");
}

TEST(ClientConnection, SeesAResetConnection) {
  LoopbackPair pair(AF_INET);
  ASSERT_TRUE(pair.ok());
  const ClientConnection connection(pair.server_view());
  EXPECT_FALSE(connection.closed());
  const linger abort_on_close{1, 0};  // close() sends RST instead of FIN
  ASSERT_EQ(setsockopt(pair.client, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close),
            0);
  LoopbackPair::close_end(pair.client);
  EXPECT_TRUE(closes_soon(connection));
}

TEST(ClientConnection, AnUnknownConnectionIsNeverClosed) {
  const ClientConnection connection({"127.0.0.1", 1, "127.0.0.1", 1});
  EXPECT_FALSE(connection.found());
  EXPECT_FALSE(connection.closed());
}

}  // namespace
}  // namespace llamaq::serve
