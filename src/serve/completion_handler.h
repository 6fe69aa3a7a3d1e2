// POST /v1/chat/completions and /v1/completions: tokenize, check limits, queue the request on
// the batch scheduler and answer with the whole completion or a server-sent-event stream.
#pragma once

#include <httplib.h>

#include "serve/api_request.h"
#include "serve/serve_context.h"

namespace llamaq::serve {

// Fills `res` (or installs a stream provider on it). Throws ApiError for a bad request, and with
// status 499 when the client of a non-streamed request disconnects (its generation cancelled).
// For a stream, `log` is handed to `log_sink` when the stream ends and `log.status` is set to 0
// here so the caller does not log it twice.
void handle_completion(const ServeContext& ctx, Endpoint endpoint, const httplib::Request& req,
                       httplib::Response& res, RequestLog& log, const LogSink& log_sink);

}  // namespace llamaq::serve
