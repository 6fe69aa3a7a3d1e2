// The HTTP layer before a model is loaded (loopback, ephemeral port): /health is 503 "loading",
// generation endpoints 503, the API key is checked first; the constant-time key comparison.
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "serve/http_server.h"

namespace llamaq::serve {
namespace {

TEST(HttpServer, AnswersWhileLoading) {
  HttpOptions options;
  options.port = 0;
  options.api_key = "secret";
  options.threads = 2;
  HttpServer server(options);
  server.start();
  ASSERT_GT(server.port(), 0);
  httplib::Client client("127.0.0.1", server.port());
  const auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503);
  EXPECT_EQ(nlohmann::json::parse(health->body)["status"], "loading");

  const auto anonymous = client.Get("/v1/models");
  ASSERT_TRUE(anonymous);
  EXPECT_EQ(anonymous->status, 401);
  EXPECT_EQ(nlohmann::json::parse(anonymous->body)["error"]["code"], "invalid_api_key");

  const httplib::Headers auth = {{"Authorization", "Bearer secret"}};
  const auto loading = client.Post("/v1/chat/completions", auth, "{}", "application/json");
  ASSERT_TRUE(loading);
  EXPECT_EQ(loading->status, 503);
  EXPECT_EQ(loading->get_header_value("Retry-After"), "1");
  EXPECT_EQ(nlohmann::json::parse(loading->body)["error"]["code"], "loading");
  server.stop();
}

TEST(HttpServer, ABusyPortIsAClearError) {
  HttpOptions first;
  first.port = 0;
  first.threads = 1;
  HttpServer a(first);
  a.start();
  HttpOptions second = first;
  second.port = a.port();
  HttpServer b(second);
  try {
    b.start();
    FAIL() << "bound a port that is in use";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("cannot listen on 127.0.0.1:" + std::to_string(a.port())),
              std::string::npos)
        << e.what();
  }
}

TEST(ConstantTimeEqual, ComparesWholeStrings) {
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_TRUE(constant_time_equal("", ""));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "ab"));
  EXPECT_FALSE(constant_time_equal("", "a"));
  EXPECT_FALSE(constant_time_equal(std::string("a\0b", 3), "a"));
}

}  // namespace
}  // namespace llamaq::serve
