// The log's per-site budget: a flood of one line (a peer refused again and
// again) writes at most kLogLinesPerSecond lines a second, and the next line
// that passes says how many were dropped. The clock is injected.
#include "base/logging.h"

#include <atomic>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ipcrpc::internal {
namespace {

std::atomic<int64_t> fake_now{0};
int64_t FakeNow() { return fake_now.load(); }

class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Far past any window an earlier test (or repetition) used.
    fake_now += 1000'000'000'000;
    SetLogClockForTesting(&FakeNow);
    SetLogSinkForTesting([this](LogLevel, const std::string& line) { lines_.push_back(line); });
  }
  void TearDown() override {
    SetLogSinkForTesting(nullptr);
    SetLogClockForTesting(nullptr);
  }
  void Refuse(int n) {
    for (int i = 0; i < n; ++i) IPCRPC_LOG(WARNING) << "refusing peer " << i;
  }
  std::vector<std::string> lines_;
};

TEST_F(LoggingTest, AFloodFromOneSiteIsCappedAndCounted) {
  Refuse(100000);
  ASSERT_EQ(lines_.size(), static_cast<size_t>(kLogLinesPerSecond));
  EXPECT_THAT(lines_.back(), ::testing::Not(::testing::HasSubstr("suppressed")));
  // A second later the site may write again; its first line counts the rest.
  fake_now += 1'000'000'000;
  Refuse(1);
  ASSERT_EQ(lines_.size(), static_cast<size_t>(kLogLinesPerSecond) + 1);
  EXPECT_THAT(lines_.back(), ::testing::HasSubstr(absl::StrCat(
                                 100000 - kLogLinesPerSecond, " more lines from here suppressed")));
}

TEST_F(LoggingTest, SitesHaveBudgetsOfTheirOwn) {
  Refuse(1000);
  IPCRPC_LOG(WARNING) << "another site";
  ASSERT_EQ(lines_.size(), static_cast<size_t>(kLogLinesPerSecond) + 1);
  EXPECT_THAT(lines_.back(), ::testing::HasSubstr("another site"));
}

}  // namespace
}  // namespace ipcrpc::internal
