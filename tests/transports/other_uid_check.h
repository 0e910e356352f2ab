// The check every transport's test runs for peers of another uid: serve
// TestService on a fresh endpoint, run conformance_client as uid 65534
// against it, once with that uid refused (the client must not be served)
// and once allowed (it must be).
#ifndef IPCRPC_TESTS_TRANSPORTS_OTHER_UID_CHECK_H_
#define IPCRPC_TESTS_TRANSPORTS_OTHER_UID_CHECK_H_

#include <unistd.h>

#include <functional>
#include <string>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/conformance/test_service.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"

namespace ipcrpc::testing {

inline constexpr uid_t kOtherUid = 65534;

// Returns a reason to skip (not root, or the client cannot run as that uid),
// or "" once both cases were checked. `new_endpoint` gives a fresh endpoint
// per case; `mode` is the server's ServerOptions::mode. A refusal must come
// within `refusal_within`.
inline std::string CheckOtherUidRefusedUnlessAllowed(
    const std::function<std::string()>& new_endpoint, unsigned mode = 0600,
    absl::Duration refusal_within = absl::Seconds(30)) {
  if (geteuid() != 0) return "needs root to run a client as another uid";
  for (bool allowed : {false, true}) {
    SCOPED_TRACE(allowed ? "allowed" : "refused");
    const std::string endpoint = new_endpoint();
    TestService service;
    ServerOptions options;
    options.mode = mode;
    if (allowed) options.allowed_uids = {kOtherUid};
    Server server(options);
    EXPECT_THAT(server.RegisterService(&service), IsOk());
    EXPECT_THAT(server.Listen(endpoint), IsOk());
    EXPECT_THAT(server.Start(), IsOk());
    bool cannot_run = false;
    const absl::Time start = absl::Now();
    auto line = FirstLineAsUid({IPCRPC_CONFORMANCE_CLIENT, "--endpoint=" + endpoint}, kOtherUid,
                               &cannot_run);
    if (cannot_run) return "conformance_client cannot be run as uid 65534";
    if (allowed) {
      EXPECT_THAT(line, IsOk());
      if (line.ok()) {
        EXPECT_THAT(*line, ::testing::StartsWith("PID "));
      }
    } else {
      EXPECT_FALSE(line.ok()) << "a client of another uid was served: " << *line;
      EXPECT_LT(absl::Now() - start, refusal_within) << "the refusal was not said in time";
    }
    server.Shutdown(absl::ZeroDuration());
  }
  return "";
}

}  // namespace ipcrpc::testing

#endif  // IPCRPC_TESTS_TRANSPORTS_OTHER_UID_CHECK_H_
