// CPU affinity for tests that pin threads: which CPU to pin to, and the set
// of that one CPU.
#ifndef IPCRPC_TESTS_UTIL_CPUS_H_
#define IPCRPC_TESTS_UTIL_CPUS_H_

#include <sched.h>

namespace ipcrpc::testing {

// The lowest-numbered CPU in `allowed`, or -1 if it has none.
inline int FirstCpuOf(const cpu_set_t& allowed) {
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &allowed)) return cpu;
  }
  return -1;
}

// The set of `cpu` alone.
inline cpu_set_t OnlyCpu(int cpu) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  return one;
}

}  // namespace ipcrpc::testing

#endif  // IPCRPC_TESTS_UTIL_CPUS_H_
