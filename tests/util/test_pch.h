// The headers most test files include, precompiled once per build tree and
// reused by every gtest target (tests/CMakeLists.txt, IPCRPC_TESTS_PCH):
// parsing them took 5 of a test file's 18 s of compile time. Only headers
// whose meaning no test's own definitions change belong here: each test
// still includes what it uses, and builds the same without this file.
#ifndef IPCRPC_TESTS_UTIL_TEST_PCH_H_
#define IPCRPC_TESTS_UTIL_TEST_PCH_H_

#include <fcntl.h>
#include <google/protobuf/message.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "ipcrpc/ipcrpc.h"
#include "tests/util/process.h"
#include "tests/util/status_matchers.h"

#endif  // IPCRPC_TESTS_UTIL_TEST_PCH_H_
