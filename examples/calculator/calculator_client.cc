// The calculator client: calls calc::Calculator through its generated Stub.
//
//   calculator_client --endpoint=unix:/tmp/calc.sock
//   calculator_client --endpoint=pipe: --server=./calculator_server
//
// Exits 0 when every call behaved as documented.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "calculator.ipcrpc.h"

ABSL_FLAG(std::string, endpoint, "", "Server endpoint (unix:PATH, or pipe: with --server)");
ABSL_FLAG(std::string, server, "", "With --endpoint=pipe:, the server program to spawn");
ABSL_FLAG(int, wait_for_server_ms, 0, "Keep trying to connect this long while no server listens");

namespace {

bool Check(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string endpoint = absl::GetFlag(FLAGS_endpoint);
  absl::StatusOr<std::shared_ptr<ipcrpc::Channel>> channel;
  if (endpoint == "pipe:") {
    channel = ipcrpc::SpawnChild({absl::GetFlag(FLAGS_server), "--endpoint=pipe:"});
  } else {
    const absl::Time give_up =
        absl::Now() + absl::Milliseconds(absl::GetFlag(FLAGS_wait_for_server_ms));
    while (!(channel = ipcrpc::Channel::Connect(endpoint)).ok() &&
           absl::IsUnavailable(channel.status()) && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  if (!channel.ok()) {
    std::fprintf(stderr, "calculator_client: %s\n", channel.status().ToString().c_str());
    return 1;
  }
  calc::Calculator::Stub calculator(*channel);
  bool all_ok = true;

  calc::AddRequest add;
  add.set_a(40);
  add.set_b(2);
  absl::StatusOr<calc::AddReply> sum = calculator.Add(add);
  std::printf("Add(40, 2) = %s\n",
              sum.ok() ? std::to_string(sum->sum()).c_str() : sum.status().ToString().c_str());
  all_ok &= Check(sum.ok() && sum->sum() == 42, "Add");

  calc::DivideRequest divide;
  divide.set_dividend(1);
  divide.set_divisor(0);
  absl::StatusOr<calc::DivideReply> quotient = calculator.Divide(divide);
  std::printf("Divide(1, 0) = %s\n", quotient.status().ToString().c_str());
  all_ok &= Check(absl::IsInvalidArgument(quotient.status()), "Divide by zero is INVALID_ARGUMENT");

  calc::SlowSquareRequest slow;
  slow.set_value(12);
  slow.set_work_ms(10000);
  ipcrpc::CallOptions options;
  options.timeout = absl::Milliseconds(100);
  const absl::Time start = absl::Now();
  absl::StatusOr<calc::SlowSquareReply> square = calculator.SlowSquare(slow, options);
  std::printf("SlowSquare(12, 10 s of work) with a 100 ms deadline = %s after %s\n",
              square.status().ToString().c_str(), absl::FormatDuration(absl::Now() - start).c_str());
  all_ok &= Check(absl::IsDeadlineExceeded(square.status()), "SlowSquare honours its deadline");

  slow.set_work_ms(10);
  absl::Notification done;
  absl::StatusOr<calc::SlowSquareReply> async_square;
  calculator.SlowSquareAsync(slow, {}, [&](absl::StatusOr<calc::SlowSquareReply> reply) {
    async_square = std::move(reply);
    done.Notify();
  });
  done.WaitForNotification();
  std::printf("SlowSquareAsync(12) = %s\n", async_square.ok()
                                                ? std::to_string(async_square->square()).c_str()
                                                : async_square.status().ToString().c_str());
  all_ok &= Check(async_square.ok() && async_square->square() == 144, "SlowSquareAsync");
  return all_ok ? 0 : 1;
}
